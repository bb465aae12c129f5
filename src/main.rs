fn main() -> std::process::ExitCode {
    kvmnet::cli::main()
}
