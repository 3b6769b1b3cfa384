//! The `drills` binary (see the library's documentation).

use std::process::ExitCode;

const USAGE: &str =
    "usage: drills <shutdown|database|provider|soak|scale> [options] | drills loadgen [options] | drills help";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["loadgen", rest @ ..] => drills::loadgen::run(rest),
        ["help" | "--help" | "-h"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        [] => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
        drill => drills::drill::run(drill),
    }
}
