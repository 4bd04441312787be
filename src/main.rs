fn main() -> std::process::ExitCode {
    sockwarden::cli::main()
}
