fn main() -> std::process::ExitCode {
    audio_processor::main()
}
