//! `varmorctl` binary: parses the command line and runs it.

use clap::Parser;

fn main() {
    let cli = varmorctl::Cli::parse();
    let code = varmorctl::run(
        cli,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    );
    std::process::exit(code);
}
