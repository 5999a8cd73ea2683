//! The `htex` command line; everything lives in the library so tests run the same code.

fn main() -> std::process::ExitCode {
    htex::cli::main()
}
