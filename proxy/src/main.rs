//! The `switchyard` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchyard::config::LogFormat;
use switchyard::shared::Loaded;

/// jemalloc keeps freed pages for reuse (10 s dirty decay). With glibc's
/// allocator every multi-megabyte Produce request or Fetch response was a fresh
/// mmap, and the kernel's page faulting and clearing took 16% (consume) to 60%
/// (produce, also with mimalloc, which returns pages after 10 ms) of the
/// proxy's CPU.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Kafka-protocol proxy: one stable endpoint in front of several Kafka sites"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy until SIGTERM or SIGINT.
    Run {
        /// Path to the YAML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file; print every problem with its key, exit 1 if any.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Add or replace a SASL user in a credentials file (salted SCRAM
    /// credentials; no password is stored). The password is read from
    /// standard input (one line) or from the environment variable named by
    /// --password-env.
    Credentials {
        /// The credentials file (`listen.sasl.credentials`); created if missing.
        #[arg(long, short)]
        file: PathBuf,
        #[arg(long, short)]
        user: String,
        /// Read the password from this environment variable instead of stdin.
        #[arg(long)]
        password_env: Option<String>,
        /// SCRAM hashes to store (PLAIN uses SHA-256 if present).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "SCRAM-SHA-256,SCRAM-SHA-512"
        )]
        mechanisms: Vec<String>,
        /// PBKDF2 iterations (at least 4096, as Kafka requires).
        #[arg(long, default_value_t = 8192)]
        iterations: u32,
    },
}

/// `switchyard credentials`: adds the user, or says why not.
fn add_credentials(
    file: &std::path::Path,
    user: &str,
    password_env: Option<&str>,
    mechanisms: &[String],
    iterations: u32,
) -> Result<(), String> {
    use switchyard::sasl::scram::Hash;
    let mut hashes = Vec::new();
    for m in mechanisms {
        hashes.push(match m.as_str() {
            "SCRAM-SHA-256" => Hash::Sha256,
            "SCRAM-SHA-512" => Hash::Sha512,
            other => {
                return Err(format!(
                    "unknown mechanism `{other}` (SCRAM-SHA-256, SCRAM-SHA-512)"
                ))
            }
        });
    }
    let password = match password_env {
        Some(var) => {
            std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))?
        }
        None => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
            line.trim_end_matches(['\r', '\n']).to_string()
        }
    };
    if password.is_empty() {
        return Err("the password is empty".into());
    }
    switchyard::sasl::add_user(file, user, password.as_bytes(), &hashes, iterations)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Credentials {
            file,
            user,
            password_env,
            mechanisms,
            iterations,
        } => match add_credentials(
            &file,
            &user,
            password_env.as_deref(),
            &mechanisms,
            iterations,
        ) {
            Ok(()) => {
                println!(
                    "{}: user `{user}` saved ({})",
                    file.display(),
                    mechanisms.join(", ")
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("switchyard credentials: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Check { config } => match Loaded::file(&config) {
            Ok(_) => {
                println!("{}: config OK", config.display());
                ExitCode::SUCCESS
            }
            Err(errs) => {
                for e in &errs.0 {
                    println!("{}: {e}", config.display());
                }
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => {
            let loaded = match Loaded::file(&config) {
                Ok(l) => l,
                Err(errs) => {
                    for e in &errs.0 {
                        eprintln!("{}: {e}", config.display());
                    }
                    eprintln!("switchyard: invalid config, not starting");
                    return ExitCode::FAILURE;
                }
            };
            init_logging(loaded.cfg.config.log.format, &loaded.cfg.config.log.level);
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("switchyard: cannot start runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(switchyard::server::run(loaded)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "switchyard failed");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_logging(format: LogFormat, level: &str) {
    // RUST_LOG, when set, wins over the config so operators can debug without editing it.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}
