fn main() -> std::process::ExitCode {
    call_api::main()
}
