//! A session's workspace (PROTOCOL.md §4.9 and §7.7): [`Client::write_file`],
//! [`Client::read_file`], [`Client::list_files`], [`Client::delete_file`]. Each sends one
//! file frame (a large upload several, one after the other) whose answers come on the
//! socket's own stream with its `request`; bytes travel as base64. The client must read
//! the session (an execute in it, or [`Client::attach`]), and the session must keep a
//! workspace: ask for one with `ExecuteRequest::workspace`.
//!
//! If the connection drops before the answer, a read or a list is asked again on the new
//! socket; a write or a delete fails with [`ClientError::ConnectionClosed`], since it may
//! or may not have been done.

use crate::client::Client;
use crate::command::{call, Command};
use crate::ClientError;
use base64::Engine as _;
use sluice_protocol::{
    check_workspace_path, ClientFrame, DeleteFileFrame, Encoding, ErrorCode, Event, EventKind,
    FileEntry, ListFilesFrame, ReadFileFrame, WriteFileFrame,
};

/// Raw bytes of a file sent in one `write_file` frame at most: base64 of 256 KiB (and
/// the frame around it) fits the gateway's default 1 MiB frame, and a smaller
/// [`ClientOptions::max_frame_bytes`](crate::ClientOptions::max_frame_bytes) makes the
/// pieces smaller.
const PIECE_BYTES: usize = 256 << 10;

/// How [`Client::write_file`] writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteFileOptions {
    /// Permission bits of a file the write creates (0 to 0o777); 0o644 when `None`.
    pub mode: Option<u32>,
    /// Add to the end of the file instead of replacing it.
    pub append: bool,
}

/// A directory's entries, sorted by name, as [`Client::list_files`] returns them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileList {
    /// The entries.
    pub entries: Vec<FileEntry>,
    /// The directory had more than the gateway lists at once (10,000).
    pub truncated: bool,
}

impl Client {
    /// Writes `data` to `path` in `session`'s workspace (parents made), replacing the
    /// file or, with `options.append`, adding to it; returns the file's size after. Data
    /// larger than one frame goes in pieces, one after the other (the first replaces
    /// unless appending, the rest append): a refused piece ends the upload with what came
    /// before it written.
    pub async fn write_file(
        &self,
        session: &str,
        path: &str,
        data: &[u8],
        options: WriteFileOptions,
    ) -> Result<u64, ClientError> {
        check(session, path)?;
        // Base64 is 4/3 of the bytes; the rest of the frame takes well under 1 KiB.
        let room = self.options().max_frame_bytes.saturating_sub(1024) / 4 * 3;
        let piece = PIECE_BYTES.min(room).max(1);
        let mut size = 0;
        let pieces: Vec<&[u8]> = if data.is_empty() {
            vec![data]
        } else {
            data.chunks(piece).collect()
        };
        for (n, bytes) in pieces.into_iter().enumerate() {
            let frame = ClientFrame::WriteFile(WriteFileFrame {
                request: self.next_request(),
                session: session.to_owned(),
                path: path.to_owned(),
                data: base64::engine::general_purpose::STANDARD.encode(bytes),
                encoding: Encoding::Base64,
                append: options.append || n > 0,
                mode: options.mode,
            });
            let answer = self.ask(frame, false).await?.pop();
            size = answered(session, path, answer, EventKind::FileWritten)?
                .size
                .unwrap_or(0);
        }
        Ok(size)
    }

    /// The whole of `path` in `session`'s workspace.
    pub async fn read_file(&self, session: &str, path: &str) -> Result<Vec<u8>, ClientError> {
        self.read_file_range(session, path, 0, None).await
    }

    /// `length` bytes (to the end when `None`) of `path` from `offset`.
    pub async fn read_file_range(
        &self,
        session: &str,
        path: &str,
        offset: u64,
        length: Option<u64>,
    ) -> Result<Vec<u8>, ClientError> {
        check(session, path)?;
        let frame = ClientFrame::ReadFile(ReadFileFrame {
            request: self.next_request(),
            session: session.to_owned(),
            path: path.to_owned(),
            offset: Some(offset),
            length,
            encoding: Encoding::Base64,
        });
        let mut bytes = Vec::new();
        for chunk in self.ask(frame, true).await? {
            let chunk = answered(session, path, Some(chunk), EventKind::FileData)?;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(&chunk.data)
                .map_err(|err| {
                    ClientError::Protocol(format!("a file_data part is not base64: {err}"))
                })?;
            bytes.extend(decoded);
        }
        Ok(bytes)
    }

    /// The entries of the directory `path` (`""`: the workspace itself).
    pub async fn list_files(&self, session: &str, path: &str) -> Result<FileList, ClientError> {
        if !path.is_empty() {
            check(session, path)?;
        }
        let frame = ClientFrame::ListFiles(ListFilesFrame {
            request: self.next_request(),
            session: session.to_owned(),
            path: (!path.is_empty()).then(|| path.to_owned()),
        });
        let answer = self.ask(frame, true).await?.pop();
        let listed = answered(session, path, answer, EventKind::FileList)?;
        Ok(FileList {
            entries: listed.entries.unwrap_or_default(),
            truncated: listed.truncated == Some(true),
        })
    }

    /// Removes `path`: a file or link, an empty directory, or with `recursive` a
    /// directory and everything in it.
    pub async fn delete_file(
        &self,
        session: &str,
        path: &str,
        recursive: bool,
    ) -> Result<(), ClientError> {
        check(session, path)?;
        let frame = ClientFrame::DeleteFile(DeleteFileFrame {
            request: self.next_request(),
            session: session.to_owned(),
            path: path.to_owned(),
            recursive,
        });
        let answer = self.ask(frame, false).await?.pop();
        answered(session, path, answer, EventKind::FileDeleted).map(drop)
    }

    /// Sends a frame answered by `request` on the socket's own stream (a file frame, a
    /// query) and waits for all its answers; `retry`: ask again on a new socket.
    pub(crate) async fn ask(
        &self,
        frame: ClientFrame,
        retry: bool,
    ) -> Result<Vec<Event>, ClientError> {
        let request = frame.request().unwrap_or_default().to_owned();
        let frame = frame.to_json();
        let max = self.options().max_frame_bytes;
        if frame.len() > max {
            return Err(ClientError::FrameTooLarge {
                size: frame.len(),
                max,
            });
        }
        call(self.commands(), self.shared(), |reply| Command::File {
            request,
            frame,
            retry,
            reply,
        })
        .await
    }

    /// A request id no other file frame or query of this client has.
    pub(crate) fn next_request(&self) -> String {
        format!("file-{}", self.shared().next_serial())
    }
}

/// The path rules the gateway applies, checked before anything is sent.
fn check(session: &str, path: &str) -> Result<(), ClientError> {
    check_workspace_path(path).map_err(|why| ClientError::FileRefused {
        session: session.to_owned(),
        path: path.to_owned(),
        code: ErrorCode::InvalidPath,
        message: why.to_owned(),
    })
}

/// `answer` when it is of `kind`; its refusal as an error.
fn answered(
    session: &str,
    path: &str,
    answer: Option<Event>,
    kind: EventKind,
) -> Result<Event, ClientError> {
    match answer {
        Some(event) if event.kind == kind => Ok(event),
        Some(event) if event.kind == EventKind::Error => Err(ClientError::FileRefused {
            session: session.to_owned(),
            path: path.to_owned(),
            code: event.code.unwrap_or(ErrorCode::Other),
            message: event.data,
        }),
        Some(event) => Err(ClientError::Protocol(format!(
            "a {} event answered a file frame that expects {kind}",
            event.kind
        ))),
        None => Err(ClientError::Protocol(
            "a file frame got no answer".to_owned(),
        )),
    }
}
