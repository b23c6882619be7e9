fn main() -> std::process::ExitCode {
    eprintln!("{}", xenvt_proxy::NOT_YET);
    std::process::ExitCode::FAILURE
}
