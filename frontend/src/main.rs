fn main() -> std::process::ExitCode {
    eprintln!("{}", xenvt_agent::NOT_YET);
    std::process::ExitCode::FAILURE
}
