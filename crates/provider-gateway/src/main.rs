fn main() -> std::process::ExitCode {
    provider_gateway::main()
}
