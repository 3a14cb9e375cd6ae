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
        })
    }
}
