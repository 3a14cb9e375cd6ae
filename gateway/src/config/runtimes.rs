//! [`RuntimeSpec`]: how one language is run, as configured (the built-in table and
//! `--runtime NAME=COMMAND`). Resolving an interpreter on the host is `runtime`'s job.

/// The placeholder in a runtime's arguments that stands for the source file's path.
pub const FILE_PLACEHOLDER: &str = "{file}";

/// How to run one language, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeSpec {
    /// The `language` clients name.
    pub name: String,
    /// The interpreter: a bare name looked up on the gateway's `PATH`, or a path.
    pub program: String,
    /// Arguments before the program's own; `{file}` is replaced by the source file.
    pub args: Vec<String>,
    /// Name of the source file written in the working directory.
    pub file_name: String,
    /// Variables this runtime adds to the base environment.
    pub env: Vec<(String, String)>,
    /// Arguments that make the interpreter print its real executable (unwraps shims).
    pub locate: Option<Vec<String>>,
    /// Built-in runtimes are skipped when their interpreter is missing; configured ones
    /// make start-up fail.
    pub optional: bool,
    /// Programs of this runtime keep the host's network even where the others get none
    /// (`--allow-network`).
    pub network: bool,
    /// The package index its programs install from (`--package-index`), reached
    /// through the gateway when they have no network of their own.
    pub package_index: Option<PackageIndex>,
}

impl RuntimeSpec {
    /// The built-in table: python, bash, sh and node, each used only when found.
    pub fn defaults() -> Vec<Self> {
        let spec = |name: &str, program: &str, file: &str| Self {
            name: name.into(),
            program: program.into(),
            args: vec![FILE_PLACEHOLDER.into()],
            file_name: file.into(),
            env: Vec::new(),
            locate: None,
            optional: true,
            network: false,
            package_index: None,
        };
        vec![
            Self {
                env: vec![
                    ("PYTHONUNBUFFERED".into(), "1".into()),
                    ("PYTHONDONTWRITEBYTECODE".into(), "1".into()),
                ],
                locate: Some(vec![
                    "-c".into(),
                    "import sys; print(sys.executable)".into(),
                ]),
                ..spec("python", "python3", "main.py")
            },
            spec("bash", "bash", "main.sh"),
            spec("sh", "sh", "main.sh"),
            Self {
                locate: Some(vec!["-p".into(), "process.execPath".into()]),
                ..spec("node", "node", "main.js")
            },
        ]
    }

    /// Parses `NAME=COMMAND` or `NAME.EXT=COMMAND` from the command line, e.g.
    /// `ruby.rb=ruby {file}`. Without `{file}` the file is appended; without `.EXT` the
    /// file is `main.NAME`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (key, command) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?}: expected NAME=COMMAND"))?;
        let (name, ext) = key.split_once('.').unwrap_or((key, key));
        if name.is_empty() || ext.is_empty() || name.len() > sluice_protocol::MAX_ID_BYTES {
            return Err(format!("{text:?}: the runtime name is empty or too long"));
        }
        let mut words = command.split_whitespace().map(str::to_owned);
        let program = words
            .next()
            .ok_or_else(|| format!("{text:?}: the command is empty"))?;
        let mut args: Vec<String> = words.collect();
        if !args.iter().any(|a| a.contains(FILE_PLACEHOLDER)) {
            args.push(FILE_PLACEHOLDER.into());
        }
        Ok(Self {
            name: name.into(),
            program,
            args,
            file_name: format!("main.{ext}"),
            env: Vec::new(),
            locate: None,
            optional: false,
            network: false,
            package_index: None,
        })
    }
}

/// A package index an operator offers a runtime's programs (`--package-index`), and the
/// hosts they may reach for it (`--package-host`: where the index's files are served
/// from, when elsewhere): the whole of the network a program without its own may use,
/// through the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageIndex {
    /// The index's URL, as pip's `--index-url` takes it (`http://` or `https://`).
    pub url: String,
    /// Every host its programs may reach: the index's own first.
    pub hosts: Vec<AllowedHost>,
}

/// A host (and port) a runtime's programs may reach through the package proxy, and how:
/// through a TLS tunnel (`CONNECT`, for HTTPS) or with plain HTTP requests, never both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    /// A name, an IPv4 address or a bracketed IPv6 one, lower-cased.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// Reached over HTTPS (a tunnel); else plain HTTP requests.
    pub tls: bool,
}

impl PackageIndex {
    /// An index at `url` (`http(s)://HOST[:PORT]/PATH`), its host the only one allowed.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (rest, tls) = if let Some(rest) = url.strip_prefix("http://") {
            (rest, false)
        } else if let Some(rest) = url.strip_prefix("https://") {
            (rest, true)
        } else {
            return Err(format!(
                "{url:?}: a package index URL starts with http:// or https://"
            ));
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.contains('@') {
            return Err(format!("{url:?}: credentials in the index URL would reach every program; use an index that needs none"));
        }
        let (host, port) = parse_host(authority, if tls { 443 } else { 80 })
            .map_err(|why| format!("{url:?}: {why}"))?;
        Ok(Self {
            url: url.to_owned(),
            hosts: vec![AllowedHost { host, port, tls }],
        })
    }

    /// Allows `HOST[:PORT]` too, over HTTPS (port 443 unless given), or
    /// `http://HOST[:PORT]` over plain HTTP (port 80 unless given).
    pub fn allow_host(&mut self, text: &str) -> Result<(), String> {
        let (rest, tls) = match text.strip_prefix("http://") {
            Some(rest) => (rest, false),
            None => (text.strip_prefix("https://").unwrap_or(text), true),
        };
        let (host, port) = parse_host(rest.trim_end_matches('/'), if tls { 443 } else { 80 })
            .map_err(|why| format!("{text:?}: {why}"))?;
        let allowed = AllowedHost { host, port, tls };
        if !self.hosts.contains(&allowed) {
            self.hosts.push(allowed);
        }
        Ok(())
    }

    /// Whether `host:port` may be reached, through a tunnel (`tls`) or not.
    pub fn allows(&self, host: &str, port: u16, tls: bool) -> bool {
        self.hosts
            .iter()
            .any(|allowed| allowed.host == host && allowed.port == port && allowed.tls == tls)
    }
}
/// `HOST[:PORT]` (a name, an IPv4 address, or an IPv6 one in brackets), lower-cased.
fn parse_host(text: &str, default_port: u16) -> Result<(String, u16), String> {
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => {
            let port = port
                .parse::<u16>()
                .ok()
                .filter(|port| *port != 0)
                .ok_or("the port is not a number from 1 to 65535")?;
            (host, port)
        }
        _ => (text, default_port),
    };
    let name_like = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    let bracketed = host.starts_with('[') && host.ends_with(']') && host.len() > 2;
    let valid = bracketed
        && host[1..host.len() - 1]
            .chars()
            .all(|c| c.is_ascii_hexdigit() || matches!(c, ':' | '.'))
        || !host.is_empty() && host.len() <= 253 && host.chars().all(name_like);
    if !valid {
        return Err("not a host name or address".into());
    }
    Ok((host.to_ascii_lowercase(), port))
}
