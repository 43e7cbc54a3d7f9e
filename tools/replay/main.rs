//! `pm-replay`: rebuild, verify, diff and blame historic project states, and
//! list the actions each eversion produced (DESIGN §9). The logic lives in
//! [`prjmanager::replay`]; this is the command line.
//!
//! Exit codes: 0 ok, 1 divergence or failure, 2 bad input.

use std::io::Write;

use clap::{Args, Parser, Subcommand, ValueEnum};
use prjmanager::read::action_line;
use prjmanager::replay::{self, ReplayError, Source, StatePath};
use prjmanager::store::any::StoreUrl;

/// mimalloc: the fold and the replay-file parser allocate many small
/// strings, where glibc's malloc took 10-25 % of the profiles.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "pm-replay",
    version,
    about = "Rebuild, verify, diff and blame recorded project streams"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the stream comes from: a replay file or a project in a store.
#[derive(Debug, Args)]
struct SourceArgs {
    /// A replay file (JSONL, DESIGN §10; `-` reads stdin).
    #[arg(conflicts_with_all = ["store", "project"], required_unless_present = "store")]
    file: Option<String>,
    /// A store URL (sqlite://PATH); needs --project.
    #[arg(long, requires = "project")]
    store: Option<StoreUrl>,
    /// The LUCI project in the store.
    #[arg(long, requires = "store")]
    project: Option<String>,
}

impl SourceArgs {
    fn source(self) -> Source {
        match (self.file, self.store, self.project) {
            (Some(file), _, _) => Source::File(file),
            (None, Some(url), Some(project)) => Source::Store { url, project },
            _ => unreachable!("clap enforces FILE or --store with --project"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Json,
    Text,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the ProjectLog at an eversion (proto3 JSON).
    Rebuild {
        #[command(flatten)]
        source: SourceArgs,
        /// The eversion to rebuild.
        #[arg(long)]
        eversion: i64,
        /// Output format; `text` adds a `logged:` line before the JSON.
        #[arg(long, value_enum, default_value = "json")]
        format: Format,
    },
    /// Recompute every eversion; compare marker digests, stored logs and snapshots.
    Verify {
        #[command(flatten)]
        source: SourceArgs,
        /// Output format of the report.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Field-level differences of the state between two eversions.
    Diff {
        #[command(flatten)]
        source: SourceArgs,
        /// The earlier eversion.
        #[arg(long)]
        from: i64,
        /// The later eversion.
        #[arg(long)]
        to: i64,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Every eversion at which a part of the state changed, with its input events.
    Blame {
        #[command(flatten)]
        source: SourceArgs,
        /// What to follow, e.g. `pcls[clid=101].status`, `components[contains=101]`,
        /// `next_eval_time`, `purging_cls[clid=3]`, `runs[id=P/1-1-ab].status`.
        #[arg(long)]
        path: String,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// The actions each eversion produced, as JSON lines.
    Actions {
        #[command(flatten)]
        source: SourceArgs,
        /// Only the actions of this eversion.
        #[arg(long)]
        eversion: Option<i64>,
    },
    /// One self-contained HTML page (no network) showing a range of
    /// eversions as a timeline of CLs and Runs; click an eversion for its
    /// input events, reasons, actions and field diff.
    Report {
        #[command(flatten)]
        source: SourceArgs,
        /// First eversion shown (default: 1).
        #[arg(long)]
        from: Option<i64>,
        /// Last eversion shown (default: the last).
        #[arg(long)]
        to: Option<i64>,
        /// Highlight the eversions at which this state path changed (the
        /// syntax of `blame --path`).
        #[arg(long)]
        path: Option<String>,
        /// Where to write the page.
        #[arg(short, long)]
        output: std::path::PathBuf,
        /// Refuse to write a page larger than this many bytes (narrow the
        /// range instead).
        #[arg(long, default_value_t = replay::DEFAULT_MAX_REPORT_BYTES)]
        max_bytes: usize,
    },
}

fn main() {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}

fn out_error(e: std::io::Error) -> ReplayError {
    ReplayError::Failed(format!("cannot write the output: {e}"))
}

fn json_error(e: serde_json::Error) -> ReplayError {
    ReplayError::Failed(format!("cannot print the answer as JSON: {e}"))
}

fn json<T: serde::Serialize>(value: &T) -> Result<String, ReplayError> {
    serde_json::to_string_pretty(value).map_err(json_error)
}

async fn run(cli: Cli) -> Result<i32, ReplayError> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match cli.command {
        Command::Rebuild {
            source,
            eversion,
            format,
        } => {
            let opened = replay::open(&source.source()).await?;
            let rebuilt = replay::rebuild(&opened, eversion).await?;
            if !rebuilt.logged {
                eprintln!(
                    "note: eversion {eversion} was not logged (\"logged\": false); reasons are empty"
                );
            }
            if format == Format::Text {
                writeln!(out, "logged: {}", rebuilt.logged).map_err(out_error)?;
            }
            writeln!(out, "{}", json(&rebuilt.log)?).map_err(out_error)?;
        }
        Command::Verify { source, format } => {
            let opened = replay::open(&source.source()).await?;
            let report = replay::verify(&opened).await?;
            for warning in &report.warnings {
                eprintln!("warning: {warning}");
            }
            match format {
                Format::Json => writeln!(out, "{}", json(&report)?).map_err(out_error)?,
                Format::Text => {
                    writeln!(
                        out,
                        "{} events, {} eversions; checked {} marker digests, {} stored logs, {} stored snapshots",
                        report.events,
                        report.eversions,
                        report.markers_checked,
                        report.logs_checked,
                        report.snapshots_checked
                    )
                    .map_err(out_error)?;
                    match &report.divergence {
                        None => writeln!(out, "OK: every eversion agrees").map_err(out_error)?,
                        Some(d) => {
                            writeln!(out, "DIVERGENCE at eversion {}: {}", d.eversion, d.what)
                                .map_err(out_error)?;
                            writeln!(out, "input events of the batch:").map_err(out_error)?;
                            for input in &d.inputs {
                                writeln!(out, "  {input}").map_err(out_error)?;
                            }
                            writeln!(out, "recorded -> recomputed:").map_err(out_error)?;
                            for change in &d.changes {
                                writeln!(out, "  {change}").map_err(out_error)?;
                            }
                        }
                    }
                }
            }
            if let Some(d) = &report.divergence {
                out.flush().map_err(out_error)?;
                eprintln!("error: divergence at eversion {}: {}", d.eversion, d.what);
                return Ok(1);
            }
        }
        Command::Diff {
            source,
            from,
            to,
            format,
        } => {
            let opened = replay::open(&source.source()).await?;
            let changes = replay::diff_eversions(&opened, from, to).await?;
            match format {
                Format::Json => writeln!(out, "{}", json(&changes)?).map_err(out_error)?,
                Format::Text => {
                    for change in &changes {
                        writeln!(out, "{change}").map_err(out_error)?;
                    }
                }
            }
        }
        Command::Blame {
            source,
            path,
            format,
        } => {
            let path = StatePath::parse(&path).map_err(ReplayError::BadInput)?;
            let opened = replay::open(&source.source()).await?;
            let entries = replay::blame(&opened, &path).await?;
            match format {
                Format::Json => writeln!(out, "{}", json(&entries)?).map_err(out_error)?,
                Format::Text => {
                    for entry in &entries {
                        writeln!(
                            out,
                            "eversion {} (revision {}): {} -> {}",
                            entry.eversion, entry.revision, entry.before, entry.after
                        )
                        .map_err(out_error)?;
                        for input in &entry.inputs {
                            writeln!(out, "  {input}").map_err(out_error)?;
                        }
                    }
                }
            }
        }
        Command::Report {
            source,
            from,
            to,
            path,
            output,
            max_bytes,
        } => {
            let path = match path {
                Some(text) => Some(StatePath::parse(&text).map_err(ReplayError::BadInput)?),
                None => None,
            };
            let source = source.source();
            let options = replay::ReportOptions {
                from,
                to,
                path,
                max_bytes,
                source_name: source.to_string(),
            };
            let opened = replay::open(&source).await?;
            let html = replay::report(&opened, &options).await?;
            std::fs::write(&output, &html).map_err(|e| {
                ReplayError::Failed(format!("cannot write {}: {e}", output.display()))
            })?;
            eprintln!(
                "wrote {} ({} bytes); open it in a browser",
                output.display(),
                html.len()
            );
        }
        Command::Actions { source, eversion } => {
            let opened = replay::open(&source.source()).await?;
            for action in replay::actions(&opened, eversion).await? {
                let line = action_line(&action).map_err(json_error)?;
                serde_json::to_writer(&mut out, &line).map_err(json_error)?;
                writeln!(out).map_err(out_error)?;
            }
        }
    }
    out.flush().map_err(out_error)?;
    Ok(0)
}
