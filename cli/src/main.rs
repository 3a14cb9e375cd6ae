//! The `sluice` command: `sluice serve` runs the gateway, `sluice config` prints the
//! configuration it would run with, and `sluice doctor` reports what the host lets it
//! enforce (all from `sluice-gateway`); `sluice run` and `sluice attach` are its terminal
//! client (in [`terminal`], built on `sluice-client`); `sluice load` is the load harness
//! (`sluice-load`, in bench/load).
//!
//! This crate is the only one that depends on both the gateway and the client, so the
//! gateway library stays free of the client. Kept thin: parse flags (with the environment
//! and the config file, in [`config_file`]) into a [`Config`], set up logging, bind, and
//! hand over to [`sluice_gateway::run_with_signals`] with SIGINT/SIGTERM as its signals.

mod config_file;
mod terminal;

use anyhow::Context as _;
use clap::{Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use sluice_gateway::{Config, LimitBound, LimitsConfig, RuntimeSpec};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

/// Sluice: a WebSocket gateway that runs code and streams what it does, live.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// The doc comments are also the --help text, where `<FLAG>` is plain text.
#[allow(rustdoc::invalid_html_tags)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway: accept WebSocket clients on /v1/ws and run their code.
    ///
    /// Every flag has a safe default; `sluice serve` alone listens on 127.0.0.1:7878 and
    /// runs python, bash, sh and node (those found on PATH). Every flag can also be set by
    /// a variable SLUICE_<FLAG> (shown below) or a key of the --config file; a flag beats
    /// the variable, which beats the file.
    Serve(Box<ServeCommand>),
    /// Print the configuration `sluice serve` would run with, as a config file: every key
    /// with its value, from these flags, the SLUICE_* variables, --config FILE and the
    /// defaults, after the checks `serve` makes on the values (the files they name, such
    /// as --api-keys, are read only by `serve` when it starts).
    ///
    /// Reading the output back (`sluice serve --config FILE`) gives the same
    /// configuration; secrets are printed as "<redacted>" and must be put back. Starts no
    /// gateway.
    Config(Box<ServeCommand>),
    /// Print what this host lets the gateway enforce: for each limit and isolation
    /// layer, the mechanism it will use, or that it is not enforced here and why.
    Doctor,
    /// Run a program on a gateway as if it ran here: its output streams to this
    /// terminal, this terminal's input to it, and `sluice run` exits with its status.
    ///
    /// The program's stdout and stderr come out here byte for byte as they arrive; stdin
    /// is forwarded (line by line from a terminal) and closed at its end; Ctrl-C cancels
    /// the program, a second Ctrl-C exits at once. The gateway is --url, or $SLUICE_URL.
    #[command(after_help = terminal::run::AFTER_HELP)]
    Run(Box<terminal::run::RunArgs>),
    /// Start an interactive shell (or a Python or Node REPL) on a gateway, on a remote
    /// terminal driven from this one, as `ssh` does.
    ///
    /// This terminal goes raw until the shell ends (every key, Ctrl-C and Ctrl-D
    /// included, goes to the shell) and its window size is followed. The gateway is
    /// --url, or $SLUICE_URL.
    #[command(after_help = terminal::interactive::SHELL_AFTER_HELP)]
    Shell(Box<terminal::interactive::ShellArgs>),
    /// Print a session's events live, one per line, whoever runs programs in it.
    ///
    /// Replays the events the gateway still buffers (after --since), then follows the
    /// session until Ctrl-C; a dropped connection is resumed where it stopped.
    #[command(after_help = terminal::attach::AFTER_HELP)]
    Attach(terminal::attach::AttachArgs),
    /// Load-test a gateway: run many programs at once over many sockets, verify every
    /// event it sends back, and report latencies, delivery lag and throughput.
    ///
    /// Speaks the wire protocol directly, so it sees exactly what the gateway sent. The
    /// summary goes to stdout, a progress bar to stderr (on a terminal); --json and --html
    /// write the full result. A scenario comes from the flags, or a --scenario TOML file
    /// whose keys the flags override (docs/load.md).
    #[command(after_help = sluice_load::AFTER_HELP)]
    Load(Box<sluice_load::LoadArgs>),
    /// Manage the API keys a gateway accepts (`sluice serve --api-keys FILE`).
    #[command(subcommand)]
    Key(KeyCommand),
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Make a new API key for TENANT: its SHA-256 hash is appended to FILE (created
    /// with mode 0600 if missing) and the key itself is printed once, here, and stored
    /// nowhere. Give it to the client; a gateway reading FILE accepts it from its next
    /// start or SIGHUP (`kill -HUP`). To revoke a key, delete its line and send SIGHUP
    /// (sockets already open stay open until they close).
    Add {
        /// The tenant the key belongs to: its sessions, quotas and logs are named
        /// after it (letters, digits, '.', '_', '-', '@'; at most 64).
        tenant: String,
        /// The key file.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
    },
    /// Print the line a key file holds for a key read from stdin (`TENANT` then the
    /// hash), for keys made elsewhere.
    Hash {
        /// The tenant to put on the line.
        tenant: String,
    },
}

/// The flags of `serve` and `config`: the config file, then every setting.
#[derive(Debug, Args)]
struct ServeCommand {
    /// Read settings from this TOML file: each key is a flag of `sluice serve` without
    /// its dashes, in snake case (`max_executions = 64`, `allow_origin = ["https://ide.example"]`,
    /// `log_json = true`). Flags and SLUICE_* variables override it; see docs/operating.md.
    #[arg(long = config_file::CONFIG_FLAG, value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(flatten)]
    args: ServeArgs,
}

/// Every setting of the gateway. Each flag is also a key of the config file and a
/// variable `SLUICE_<FLAG>` (see [`config_file`]): a flag added here needs nothing else.
#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (the log says which).
    #[arg(long, default_value = "127.0.0.1:7878")]
    listen: SocketAddr,

    /// Largest text frame a client may send, in bytes. Larger frames get a `too_large`
    /// error; frames over four times this close the socket (code 1009).
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES")]
    max_frame_bytes: usize,

    /// Most output bytes carried by one stdout/stderr event.
    #[arg(long, default_value_t = sluice_protocol::DEFAULT_CHUNK_BYTES, value_name = "BYTES")]
    chunk_bytes: usize,

    /// Time between SIGTERM and SIGKILL when an execution is cancelled.
    #[arg(long, default_value_t = 2_000, value_name = "MS")]
    kill_grace_ms: u64,

    /// Wall-clock limit applied when a request names none.
    #[arg(long, default_value_t = LimitsConfig::default().timeout_ms.default, value_name = "MS")]
    default_timeout_ms: u64,

    /// Largest wall-clock limit a request may ask for.
    #[arg(long, default_value_t = LimitsConfig::default().timeout_ms.max, value_name = "MS")]
    max_timeout_ms: u64,

    /// Output limit (stdout plus stderr) applied when a request names none.
    #[arg(long, default_value_t = LimitsConfig::default().output_bytes.default, value_name = "BYTES")]
    default_output_bytes: u64,

    /// Largest output limit a request may ask for.
    #[arg(long, default_value_t = LimitsConfig::default().output_bytes.max, value_name = "BYTES")]
    max_output_bytes: u64,

    /// CPU-time limit of a program's process when a request names none (enforced by the
    /// kernel in whole seconds, rounded up; not applied to persistent interpreters).
    #[arg(long, default_value_t = LimitsConfig::default().cpu_ms.default, value_name = "MS")]
    default_cpu_ms: u64,

    /// Largest CPU-time limit a request may ask for.
    #[arg(long, default_value_t = LimitsConfig::default().cpu_ms.max, value_name = "MS")]
    max_cpu_ms: u64,

    /// Largest file a program may write when a request names no limit.
    #[arg(long, default_value_t = LimitsConfig::default().file_size_bytes.default, value_name = "BYTES")]
    default_file_size_bytes: u64,

    /// Largest file-size limit a request may ask for.
    #[arg(long, default_value_t = LimitsConfig::default().file_size_bytes.max, value_name = "BYTES")]
    max_file_size_bytes: u64,

    /// Descriptors a program may have open when a request names no limit.
    #[arg(long, default_value_t = LimitsConfig::default().open_files.default, value_name = "N")]
    default_open_files: u64,

    /// Largest open-files limit a request may ask for (at most the gateway's own hard
    /// limit on descriptors).
    #[arg(long, default_value_t = LimitsConfig::default().open_files.max, value_name = "N")]
    max_open_files: u64,

    /// Memory of a program's whole process tree when a request names no limit (enforced
    /// with a cgroup where the host lets the gateway create them; see `sluice doctor`).
    #[arg(long, default_value_t = LimitsConfig::default().memory_bytes.default, value_name = "BYTES")]
    default_memory_bytes: u64,

    /// Largest memory limit a request may ask for.
    #[arg(long, default_value_t = LimitsConfig::default().memory_bytes.max, value_name = "BYTES")]
    max_memory_bytes: u64,

    /// Processes and threads of a program's tree alive at once when a request names no
    /// limit (a cgroup, where available).
    #[arg(long, default_value_t = LimitsConfig::default().processes.default, value_name = "N")]
    default_processes: u64,

    /// Largest process limit a request may ask for.
    #[arg(long, default_value_t = LimitsConfig::default().processes.max, value_name = "N")]
    max_processes: u64,

    /// Bytes a program may store in its workspace, /tmp and /dev/shm together when a
    /// request names no limit (one private tmpfs; with namespace isolation).
    #[arg(long, default_value_t = LimitsConfig::default().workspace_bytes.default, value_name = "BYTES")]
    default_workspace_bytes: u64,

    /// Largest workspace limit a request may ask for.
    #[arg(long, default_value_t = LimitsConfig::default().workspace_bytes.max, value_name = "BYTES")]
    max_workspace_bytes: u64,

    /// WebSocket connections served at once; more get HTTP 503.
    #[arg(long, default_value_t = Config::default().max_connections, value_name = "N")]
    max_connections: usize,

    /// Executions running at once on the whole gateway.
    #[arg(long, default_value_t = Config::default().max_executions, value_name = "N")]
    max_executions: usize,

    /// Executions running at once on one socket.
    #[arg(long, default_value_t = Config::default().max_executions_per_connection, value_name = "N")]
    max_executions_per_connection: usize,

    /// Named sessions one socket may read at once (by executing in them or attaching).
    #[arg(long, default_value_t = Config::default().max_sessions_per_connection, value_name = "N")]
    max_sessions_per_connection: usize,

    /// Events each session keeps for replay to sockets that attach or resume.
    #[arg(long, default_value_t = Config::default().replay_events, value_name = "EVENTS")]
    replay_events: usize,

    /// Bytes of events each session keeps for replay.
    #[arg(long, default_value_t = Config::default().replay_bytes, value_name = "BYTES")]
    replay_bytes: usize,

    /// How long a session with no socket attached lives on, its executions running, so a
    /// client can reconnect and resume; then its executions are cancelled. 0: at once.
    #[arg(long, default_value_t = 60_000, value_name = "MS")]
    session_grace_ms: u64,

    /// How strongly executions are confined: `auto` (the strongest this host offers),
    /// `none` (process group, clean environment and rlimits only: the fastest start),
    /// `cgroups` (also a cgroup per execution: memory and process limits for the whole
    /// tree, every process killed at the end; refuses to start without one), or
    /// `namespaces` (also a jail per program: own PID, mount, IPC, UTS and network
    /// namespaces, an unprivileged user, a read-only system and a private size-limited
    /// workspace and /tmp; needs root or user namespaces, and `sluice-jail` next to
    /// `sluice`). `sluice
    /// doctor` shows what this host offers.
    #[arg(long, default_value = "auto", value_name = "LEVEL")]
    isolation: sluice_gateway::Isolation,

    /// Let programs of this language keep the host's network where the others get none
    /// (`--network auto|off`). Repeatable. Example: --allow-network node
    #[arg(long = "allow-network", value_name = "LANGUAGE")]
    network_languages: Vec<String>,

    /// The unprivileged user id programs run as (never 0): a root gateway's unjailed
    /// ones run as UID; each jail alive gets its own id counting up from UID, up to
    /// UID plus --max-executions, --max-kernels, --max-workspaces, the warm entries
    /// (--warm-pool per runtime) and 64. The gateway logs the range at start and
    /// `sluice doctor` prints it for the defaults. Pick a range no account on the host
    /// uses, and one per gateway on the same host.
    #[arg(long, default_value_t = sluice_gateway::DEFAULT_SANDBOX_ID, value_name = "UID")]
    sandbox_uid: u32,

    /// The group id programs run as (never 0), counting up per jail as --sandbox-uid.
    #[arg(long, default_value_t = sluice_gateway::DEFAULT_SANDBOX_ID, value_name = "GID")]
    sandbox_gid: u32,

    /// The `sluice-jail` launcher [default: the one next to this executable].
    #[arg(long, value_name = "PATH")]
    jail: Option<PathBuf>,

    /// Whether programs may use the network: `auto` (off where the host can give each
    /// program an empty network namespace: the jail's own, or without the jail one made
    /// before exec, which needs root; on with `--isolation none`), `off` (refuses to
    /// start otherwise) or `on`.
    #[arg(long, default_value = "auto", value_name = "SETTING")]
    network: sluice_gateway::Network,

    /// Persistent interpreters alive at once (one per persistent session); a persistent
    /// execution that would start one more fails with `too_many_executions`.
    #[arg(long, default_value_t = Config::default().max_kernels, value_name = "N")]
    max_kernels: usize,

    /// Session workspaces kept at once (`"workspace": true` on attach or execute), each
    /// a tmpfs of up to its workspace_bytes, so at most this many times the largest
    /// workspace_bytes of memory; one more is refused with `too_many_sessions`.
    #[arg(long, default_value_t = Config::default().max_workspaces, value_name = "N")]
    max_workspaces: usize,

    /// Session workspaces one peer's sessions may keep at once [default: a quarter of
    /// --max-workspaces].
    #[arg(long, value_name = "N")]
    max_workspaces_per_peer: Option<usize>,

    /// Bytes all session workspaces may hold together, adding up their sizes (their
    /// files are memory: never overcommitted); each peer may hold --budget-share-per-peer
    /// of it, and one that does not fit is refused with `too_many_sessions`. 0: not added
    /// up [default: a third of --memory-budget-bytes, about a quarter of the host's memory].
    #[arg(long, value_name = "BYTES")]
    workspace_budget_bytes: Option<u64>,

    /// Entries kept started per runtime, each in its own cgroup, directory and jail,
    /// ahead of the executions that will use them (one each): Python interpreters
    /// already running, and for the other runtimes jails waiting before their exec. 0
    /// turns the warm pools off [default: 2 when programs run in the jail, else 0].
    #[arg(long, value_name = "N")]
    warm_pool: Option<usize>,

    /// The runtimes that get a warm pool, comma-separated [default: all of them].
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    warm_runtimes: Option<Vec<String>>,

    /// Most warm entries started per second and runtime, so refilling after a burst
    /// does not take the CPU from running programs.
    #[arg(long, default_value_t = Config::default().warm_pool_refill, value_name = "N")]
    warm_pool_refill: u32,

    /// A warm entry not used within this many milliseconds is replaced.
    #[arg(long, default_value_t = Config::default().warm_pool_max_age.as_millis() as u64, value_name = "MS")]
    warm_pool_max_age_ms: u64,

    /// Sessions open on the whole gateway, including the one each lone execution gets.
    #[arg(long, default_value_t = Config::default().max_sessions, value_name = "N")]
    max_sessions: usize,

    /// Add or replace a runtime: NAME=COMMAND or NAME.EXT=COMMAND, where COMMAND may use
    /// {file} for the source file (appended when absent). Repeatable.
    /// Example: --runtime 'ruby.rb=ruby {file}'
    #[arg(long = "runtime", value_name = "NAME=COMMAND", value_parser = RuntimeSpec::parse)]
    runtimes: Vec<RuntimeSpec>,

    /// Add a variable to every execution's environment (the gateway's own environment is
    /// never passed on). Repeatable. Example: --env TZ=UTC
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,

    /// Offer a package index to a language's programs (an npm registry for a Node
    /// runtime): pip or npm installs from it (into the session's workspace, when it
    /// keeps one), and a program without the network reaches it, and no other host,
    /// through the gateway (needs a root gateway with the jail). Repeatable.
    /// Example: `--package-index python=https://pypi.org/simple`
    #[arg(long = "package-index", value_name = "LANGUAGE=URL", value_parser = parse_env)]
    package_indexes: Vec<(String, String)>,

    /// Let a language's programs reach `HOST[:PORT]` over HTTPS (port 443 unless
    /// given), or `http://HOST[:PORT]` over plain HTTP (80), through the package proxy
    /// too: where its index serves its files from. Repeatable.
    /// Example: `--package-host python=files.pythonhosted.org`
    #[arg(long = "package-host", value_name = "LANGUAGE=HOST[:PORT]", value_parser = parse_env)]
    package_hosts: Vec<(String, String)>,

    /// Most bytes of package archives (fetched over plain HTTP through the package
    /// proxy) the gateway keeps for every session to reuse, the least recently used
    /// dropped to make room; 0 keeps none. They live under the work directory (memory,
    /// where that is a tmpfs).
    #[arg(long, default_value_t = sluice_gateway::DEFAULT_PACKAGE_CACHE_BYTES, value_name = "BYTES")]
    package_cache_bytes: u64,

    /// Directory for the executions' temporary working directories
    /// [default: /dev/shm when it is a tmpfs, else $TMPDIR or /tmp].
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,

    /// Log filter (tracing EnvFilter syntax); RUST_LOG overrides it.
    #[arg(long, default_value = "info", value_name = "FILTER")]
    log: String,

    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,

    /// Serve /metrics, /healthz and /readyz on a second listener at this address (and
    /// /metrics no longer on the main one). It serves until the drain is over.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,

    /// Require `Authorization: Bearer TOKEN` on /metrics, TOKEN being this file's first
    /// line. Without it, the main listener serves /metrics to loopback peers only.
    #[arg(long, value_name = "FILE")]
    metrics_token_file: Option<PathBuf>,

    /// Append one JSON line per finished execution to FILE (who, session, id,
    /// language, SHA-256 of the code, outcome, usage). Lines the disk cannot take are
    /// dropped and counted, never waited for.
    #[arg(long, value_name = "FILE")]
    audit_log: Option<PathBuf>,

    /// Close a socket whose client has not taken written events for this long (it
    /// stopped reading); its sessions then get the grace period like any other.
    #[arg(long, default_value_t = 30_000, value_name = "MS")]
    send_timeout_ms: u64,

    /// Bytes of stdin data that may wait for one program to read them; more get
    /// `stdin_full`.
    #[arg(long, default_value_t = Config::default().stdin_queue_bytes, value_name = "BYTES")]
    stdin_queue_bytes: usize,

    // The doc comment is also the --help text, where a URL is plain text.
    #[allow(rustdoc::bare_urls)]
    /// Allow browser pages from this origin (e.g. https://ide.example.com) to open sockets.
    /// Repeatable; `*` allows any origin. Requests without an Origin header (non-browser
    /// clients) are always allowed; browser requests from other origins get HTTP 403, so a
    /// web page cannot run code through a gateway on your machine.
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    allowed_origins: Vec<String>,

    /// Close a TCP connection that has not become a WebSocket within this long (slow or
    /// idle HTTP clients, health checks kept alive); keeps idle connections from holding
    /// the gateway's connection slots.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    handshake_timeout_ms: u64,

    // Fairness between executions (issue 10, section 4).
    /// Bytes of memory all running executions may hold together: each reserves its
    /// limits.memory_bytes (a persistent interpreter, the one it started with) and an
    /// execute that does not fit what remains gets `too_many_executions`; the parent
    /// cgroup of all executions is limited to it. 0: no total, overcommit on purpose
    /// [default: the host's memory less a quarter, at least 1 GiB].
    #[arg(long, value_name = "BYTES")]
    memory_budget_bytes: Option<u64>,

    /// How many times --memory-budget-bytes the running executions' memory limits may
    /// add up to. Limits are ceilings most programs stay far below, so the default
    /// admits 8x; the parent cgroup still holds the real total, and should the
    /// executions together reach it the kernel kills the largest (`resource_limit`
    /// `memory`). 1: admit only what fits at every limit at once.
    #[arg(long, default_value_t = 8, value_name = "RATIO")]
    memory_overcommit: u32,

    /// Percent of each budget one peer may hold: of the memory and process budgets (as
    /// admitted, so memory times --memory-overcommit) what its executions and
    /// interpreters hold (more gets `too_many_executions`), and of --buffer-budget-bytes
    /// what its sessions, sockets and input hold (more gets `gateway_busy`). 100 for a
    /// single-user gateway.
    #[arg(long, default_value_t = 25, value_name = "PERCENT", value_parser = clap::value_parser!(u32).range(1..=100))]
    budget_share_per_peer: u32,

    /// Persistent interpreters one peer's sessions may have alive at once; one more gets
    /// `too_many_executions` [default: a quarter of --max-kernels].
    #[arg(long, value_name = "N")]
    max_kernels_per_peer: Option<usize>,

    /// Processes all running executions may hold together (limits.processes added up,
    /// as for --memory-budget-bytes). 0: no total [default: half of the kernel's
    /// threads-max].
    #[arg(long, value_name = "N")]
    process_budget: Option<u64>,

    /// Worker threads for the gateway itself [default: half the CPUs, at least 1]. The
    /// programs it runs are separate processes and do not use these threads.
    #[arg(long, value_name = "N")]
    threads: Option<usize>,

    // One client must not lock out the others: per-peer caps and socket liveness. A peer
    // is an IPv4 address or an IPv6 /64; behind a proxy every client is the proxy's.
    /// WebSocket connections one peer may hold at once; more get HTTP 429
    /// [default: a quarter of --max-connections]. For a single-user gateway, set it to
    /// --max-connections.
    #[arg(long, value_name = "N")]
    max_connections_per_peer: Option<usize>,

    /// Sessions one peer may have open at once, named or gateway-made, counted until they
    /// end (grace period included); one more gets `too_many_sessions`
    /// [default: a quarter of --max-sessions].
    #[arg(long, value_name = "N")]
    max_sessions_per_peer: Option<usize>,

    /// Executions one peer may have running at once; one more gets
    /// `too_many_executions` [default: a quarter of --max-executions].
    #[arg(long, value_name = "N")]
    max_executions_per_peer: Option<usize>,

    /// Close a socket that has held no session and no execution for this long (close
    /// code 1000).
    #[arg(long, default_value_t = 60_000, value_name = "MS")]
    idle_timeout_ms: u64,

    /// Ping every socket this often; one from which nothing (no frame, no pong) has
    /// arrived for two intervals is closed (close code 1001).
    #[arg(long, default_value_t = 30_000, value_name = "MS")]
    ping_interval_ms: u64,

    // Issue 10, sections 3 and 5: the gateway's memory in total, message deadline, lead.
    /// Bytes that every session's replay buffer, every message still arriving and every
    /// queued stdin may hold together [default: a quarter of the host's memory, or of
    /// the gateway's cgroup limit when lower]. While it is spent, new executions and
    /// stdin get `gateway_busy`, buffers keep only what their lead needs, and a socket
    /// whose unfinished message needs more than 64 KiB of it is closed (code 1013).
    #[arg(long, value_name = "BYTES")]
    buffer_budget_bytes: Option<usize>,

    /// Close a socket (code 1008) that starts a message and does not finish it within
    /// this long.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    message_deadline_ms: u64,

    /// A session's lead that leaves its programs waiting for room in the replay buffer
    /// this long without freeing any loses the lead: the programs go on, and readers
    /// that fall behind get a `gap`.
    #[arg(long, default_value_t = 30_000, value_name = "MS")]
    lead_timeout_ms: u64,

    // Authentication (docs/operating.md, Authentication). With none configured every
    // client is anonymous, which is allowed only on a loopback address.
    /// Accept the API keys listed in FILE: one `TENANT sha256:HEX` per line, added with
    /// `sluice key add TENANT --file FILE` (the file holds hashes only). A client
    /// presents its key as `Authorization: Bearer KEY`, or in the subprotocol list as
    /// `sluice.token.KEY`.
    #[arg(long, value_name = "FILE")]
    api_keys: Option<PathBuf>,

    /// Accept signed tokens (JWT, HS256) made with the secret in FILE (32 bytes or
    /// more). `sub` names the tenant and `exp` is required; claims may narrow what the
    /// holder may do: `languages`, `network`, `limits`, `max_executions`,
    /// `max_sessions`, `max_kernels`, `sessions` (names or `prefix*`).
    #[arg(long, value_name = "FILE")]
    jwt_secret_file: Option<PathBuf>,

    /// Accept signed tokens verified with the RSA (RS256) or Ed25519 (EdDSA) public key
    /// in FILE (PEM), with the same claims as --jwt-secret-file.
    #[arg(long, value_name = "FILE")]
    jwt_public_key_file: Option<PathBuf>,

    /// Tokens must carry this issuer (`iss`).
    #[arg(long, value_name = "ISSUER")]
    jwt_issuer: Option<String>,

    /// Tokens must carry this audience (`aud`).
    #[arg(long, value_name = "AUDIENCE")]
    jwt_audience: Option<String>,

    /// Serve clients without credentials on an address other than loopback (by default
    /// the gateway refuses to start there without --api-keys or a token key). Only
    /// when something in front of the gateway authenticates every client.
    #[arg(long)]
    insecure_no_auth: bool,

    /// On SIGTERM or SIGINT, let running executions finish for up to this long while
    /// new connections and executions are refused (`shutting_down`) and /readyz answers
    /// 503; then cancel what still runs (its clients get its terminal event) and close
    /// every socket (code 1001). A second signal ends the gateway at once. 0: cancel at
    /// once.
    #[arg(long, default_value_t = 30_000, value_name = "MS")]
    drain_timeout_ms: u64,

    /// Do not serve the playground page (`GET /`: an editor and runs side by side in
    /// the browser, built into the binary); `/` then answers 404. While it is served, a
    /// page of the gateway's own origin may open sockets when that origin is an IP
    /// address or `localhost` (other origins still need --allow-origin).
    #[arg(long)]
    no_playground: bool,
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?}: expected KEY=VALUE")),
    }
}

impl ServeArgs {
    fn into_config(self) -> anyhow::Result<Config> {
        let mut config = Config {
            max_frame_bytes: self.max_frame_bytes,
            chunk_bytes: self.chunk_bytes,
            kill_grace: Duration::from_millis(self.kill_grace_ms),
            limits: LimitsConfig {
                timeout_ms: LimitBound {
                    default: self.default_timeout_ms,
                    max: self.max_timeout_ms,
                },
                output_bytes: LimitBound {
                    default: self.default_output_bytes,
                    max: self.max_output_bytes,
                },
                cpu_ms: LimitBound {
                    default: self.default_cpu_ms,
                    max: self.max_cpu_ms,
                },
                file_size_bytes: LimitBound {
                    default: self.default_file_size_bytes,
                    max: self.max_file_size_bytes,
                },
                open_files: LimitBound {
                    default: self.default_open_files,
                    max: self.max_open_files,
                },
                memory_bytes: LimitBound {
                    default: self.default_memory_bytes,
                    max: self.max_memory_bytes,
                },
                processes: LimitBound {
                    default: self.default_processes,
                    max: self.max_processes,
                },
                workspace_bytes: LimitBound {
                    default: self.default_workspace_bytes,
                    max: self.max_workspace_bytes,
                },
            },
            max_connections: self.max_connections,
            max_executions: self.max_executions,
            max_executions_per_connection: self.max_executions_per_connection,
            max_sessions_per_connection: self.max_sessions_per_connection,
            replay_events: self.replay_events,
            replay_bytes: self.replay_bytes,
            session_grace: Duration::from_millis(self.session_grace_ms),
            max_sessions: self.max_sessions,
            max_kernels: self.max_kernels,
            max_workspaces: self.max_workspaces,
            max_workspaces_per_peer: self.max_workspaces_per_peer,
            workspace_budget_bytes: self.workspace_budget_bytes,
            isolation: self.isolation,
            network: self.network,
            sandbox_uid: self.sandbox_uid,
            sandbox_gid: self.sandbox_gid,
            jail_program: self.jail,
            memory_budget_bytes: self.memory_budget_bytes,
            memory_overcommit: self.memory_overcommit,
            budget_share_per_peer: self.budget_share_per_peer,
            max_kernels_per_peer: self.max_kernels_per_peer,
            process_budget: self.process_budget,
            send_timeout: Duration::from_millis(self.send_timeout_ms),
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
            stdin_queue_bytes: self.stdin_queue_bytes,
            allowed_origins: self.allowed_origins,
            work_root: self.work_dir,
            max_connections_per_peer: self.max_connections_per_peer,
            max_sessions_per_peer: self.max_sessions_per_peer,
            max_executions_per_peer: self.max_executions_per_peer,
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            ping_interval: Duration::from_millis(self.ping_interval_ms),
            buffer_budget_bytes: self.buffer_budget_bytes,
            message_deadline: Duration::from_millis(self.message_deadline_ms),
            lead_timeout: Duration::from_millis(self.lead_timeout_ms),
            drain_timeout: Duration::from_millis(self.drain_timeout_ms),
            auth: sluice_gateway::AuthConfig {
                api_keys_file: self.api_keys,
                jwt_secret_file: self.jwt_secret_file,
                jwt_public_key_file: self.jwt_public_key_file,
                jwt_issuer: self.jwt_issuer,
                jwt_audience: self.jwt_audience,
                insecure_no_auth: self.insecure_no_auth,
            },
            metrics_listen: self.metrics_listen,
            metrics_token_file: self.metrics_token_file,
            audit_log: self.audit_log,
            warm_pool: self.warm_pool,
            warm_runtimes: self.warm_runtimes.clone(),
            warm_pool_refill: self.warm_pool_refill,
            warm_pool_max_age: Duration::from_millis(self.warm_pool_max_age_ms),
            playground: !self.no_playground,
            package_cache_bytes: self.package_cache_bytes,
            ..Config::default()
        };
        config.runtimes.extend(self.runtimes);
        for language in &self.network_languages {
            let mut found = false;
            // A later entry of the same name replaces an earlier one: mark them all.
            for spec in config.runtimes.iter_mut().filter(|s| &s.name == language) {
                spec.network = true;
                found = true;
            }
            if !found {
                anyhow::bail!("--allow-network {language}: no runtime is called {language:?}");
            }
        }
        for (language, url) in &self.package_indexes {
            let index = sluice_gateway::PackageIndex::parse(url)
                .map_err(|why| anyhow::anyhow!("--package-index {language}={url}: {why}"))?;
            let mut found = false;
            for spec in config.runtimes.iter_mut().filter(|s| &s.name == language) {
                spec.package_index = Some(index.clone());
                found = true;
            }
            if !found {
                anyhow::bail!("--package-index {language}=...: no runtime is called {language:?}");
            }
        }
        for (language, host) in &self.package_hosts {
            let mut found = false;
            for spec in config.runtimes.iter_mut().filter(|s| &s.name == language) {
                let index = spec.package_index.as_mut().ok_or_else(|| {
                    anyhow::anyhow!("--package-host {language}={host}: give the language a --package-index first")
                })?;
                index
                    .allow_host(host)
                    .map_err(|why| anyhow::anyhow!("--package-host {language}={host}: {why}"))?;
                found = true;
            }
            if !found {
                anyhow::bail!("--package-host {language}=...: no runtime is called {language:?}");
            }
        }
        for (key, value) in self.env {
            config.base_env.retain(|(k, _)| *k != key);
            config.base_env.push((key, value));
        }
        Ok(config)
    }
}

fn init_logging(filter: &str, json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, never into a file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// `Stop` for each SIGINT or SIGTERM (the first drains the gateway, a second ends it at
/// once) and `Reload` for each SIGHUP (the credentials are read again); see
/// `sluice_gateway::run_with_signals`.
fn gateway_signals() -> impl futures::Stream<Item = sluice_gateway::Signal> + Send + 'static {
    use sluice_gateway::Signal;
    use tokio::signal::unix::{signal, SignalKind};
    let listen = |kind: SignalKind, name: &str| match signal(kind) {
        Ok(stream) => Some(stream),
        Err(err) => {
            tracing::error!(%err, "cannot listen for {name}");
            None
        }
    };
    let term = listen(
        SignalKind::terminate(),
        "SIGTERM; only Ctrl-C stops the gateway",
    );
    let hup = listen(
        SignalKind::hangup(),
        "SIGHUP; credentials are read at start only",
    );
    futures::stream::unfold((term, hup), |(mut term, mut hup)| async move {
        let signal = tokio::select! {
            _ = tokio::signal::ctrl_c() => Signal::Stop,
            Some(()) = async { term.as_mut()?.recv().await } => Signal::Stop,
            Some(()) = async { hup.as_mut()?.recv().await } => Signal::Reload,
        };
        Some((signal, (term, hup)))
    })
}

/// Runs the command; a failure is one line on stderr (the cause chain, no backtrace)
/// and exit status 1. Flags clap rejects (and `--help`) end the way clap ends them.
fn main() -> std::process::ExitCode {
    let parsed = match config_file::parse(Cli::command(), std::env::args_os().collect()) {
        Ok(parsed) => parsed,
        Err(config_file::ParseError::Clap(err)) => err.exit(),
        Err(config_file::ParseError::File(err)) => return fail(&anyhow::Error::new(err)),
    };
    let cli = Cli::from_arg_matches(&parsed.matches).unwrap_or_else(|err| err.exit());
    match run_command(cli, &parsed) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => fail(&err),
    }
}

fn fail(err: &anyhow::Error) -> std::process::ExitCode {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "sluice: {err:#}");
    std::process::ExitCode::FAILURE
}

/// The gateway's worker threads as `args` set them.
fn worker_threads(args: &ServeArgs) -> anyhow::Result<usize> {
    let threads = args
        .threads
        .unwrap_or_else(sluice_gateway::default_worker_threads);
    if threads == 0 {
        anyhow::bail!("--threads must be at least 1");
    }
    Ok(threads)
}

fn run_command(cli: Cli, parsed: &config_file::Parsed) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(command) => {
            let args = command.args;
            let threads = worker_threads(&args)?;
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .enable_all()
                .build()
                .context("cannot start the async runtime")?
                .block_on(serve(args))
        }
        Command::Config(command) => {
            use std::io::Write as _;
            // The checks `serve` makes before it binds, so what prints would run.
            worker_threads(&command.args)?;
            let listen = command.args.listen;
            let config = command.args.into_config()?;
            config.validate().context("invalid configuration")?;
            // What serve refuses for the values alone (the files they name are read
            // when it starts, on the host it runs on).
            sluice_gateway::check_exposure(listen, &config)?;
            let text = parsed.render().context("no configuration to print")?;
            std::io::stdout()
                .write_all(text.as_bytes())
                .context("cannot write the configuration")
        }
        Command::Doctor => {
            use std::io::Write as _;
            let mut report = sluice_gateway::HostReport::probe().render();
            report.push('\n');
            report.push_str(&sluice_gateway::runtimes_report(&Config::default()));
            std::io::stdout()
                .write_all(report.as_bytes())
                .context("cannot write the report")
        }
        Command::Run(args) => std::process::exit(terminal::run::main(*args)),
        Command::Shell(args) => std::process::exit(terminal::interactive::shell_main(*args)),
        Command::Attach(args) => std::process::exit(terminal::attach::main(args)),
        Command::Load(args) => std::process::exit(sluice_load::main(*args)),
        Command::Key(command) => key_command(command),
    }
}

fn key_command(command: KeyCommand) -> anyhow::Result<()> {
    use std::io::{Read as _, Write as _};
    match command {
        KeyCommand::Add { tenant, file } => {
            let key = sluice_gateway::auth::keys::add_key(&file, &tenant)?;
            let mut out = std::io::stdout();
            writeln!(out, "{key}").context("cannot print the key")?;
            let mut err = std::io::stderr();
            let _ = writeln!(
                err,
                "sluice: added a key for tenant {tenant:?} to {}; this is the only copy of the key: give it to the client (Authorization: Bearer KEY, or SLUICE_TOKEN=KEY)",
                file.display()
            );
            Ok(())
        }
        KeyCommand::Hash { tenant } => {
            sluice_gateway::auth::keys::check_tenant(&tenant).map_err(anyhow::Error::msg)?;
            let mut key = String::new();
            std::io::stdin()
                .read_to_string(&mut key)
                .context("cannot read the key from stdin")?;
            let key = key.trim_end_matches(['\n', '\r']);
            anyhow::ensure!(!key.is_empty(), "no key on stdin");
            let line = sluice_gateway::auth::keys::hash_key(key);
            writeln!(std::io::stdout(), "{tenant} {line}").context("cannot print the line")
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(&args.log, args.log_json);
    // One descriptor per socket: the soft limit goes up to the hard one (programs never
    // inherit it; each gets its own `open_files`).
    match sluice_gateway::raise_open_files_limit() {
        Ok(limit) => tracing::debug!(limit, "open-files limit"),
        Err(err) => tracing::warn!(%err, "could not raise the open-files limit"),
    }
    let listen = args.listen;
    let config = args.into_config()?;
    config.validate().context("invalid configuration")?;
    // Before binding: a gateway that may not serve here, or whose credentials do not
    // load, never says it listens.
    sluice_gateway::check_exposure(listen, &config)?;
    sluice_gateway::check_credentials(&config)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let bound = listener
        .local_addr()
        .context("cannot read the bound address")?;
    let url = format!("ws://{bound}{}", sluice_protocol::WS_PATH);
    tracing::info!(address = %bound, %url, "listening");
    sluice_gateway::run_with_signals(listener, config, gateway_signals()).await?;
    Ok(())
}
