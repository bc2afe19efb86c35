//! The `conclave` binary: see `conclave --help` and DESIGN.md §6.

fn main() -> std::process::ExitCode {
    conclave::cli::main()
}
