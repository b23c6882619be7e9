fn main() -> std::process::ExitCode {
    eprintln!("{}", xenvt_backend::NOT_YET);
    std::process::ExitCode::FAILURE
}
