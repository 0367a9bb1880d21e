//! A device session for a browser: the web terminal ([`super::term`]) and devices' HTTP
//! consoles ([`super::consoles`]) open sessions through here, and here runs the **same**
//! session pipeline as `ward connect` (`session::open_session`: policy, maintenance windows,
//! grants, locks, idle timeout, recording, credential injection, audit), over an in-memory
//! duplex stream in place of a QUIC stream. The browser side plays the client: it reads the
//! gateway's first answer (`Opened`, `Denied` or `Error`), then sends and receives data frames,
//! and reads the `Closed` frame with the end reason. Nothing here decides anything: a browser
//! session can do exactly what a CLI session with the same identity can, no more.
//!
//! The session's `transport` is `"web"` (audit events carry `via = "web"`); its source is the
//! browser's address.

use std::io;
use std::sync::Arc;

use axum::http::StatusCode;
use tokio::io::{DuplexStream, ReadHalf, WriteHalf};
use ward_core::frame::{self, ErrorCode, Frame, Response};

use super::{ApiError, Authed, WebState};
use crate::datapath::{FrameReader, FrameWriter, Inbound};

/// The in-memory stream's buffer each way: a few data frames in flight.
const DUPLEX_BUFFER: usize = 256 * 1024;

/// What the gateway said when it opened the session (its `Opened` frame).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Opened {
    /// The session id (names the recording).
    pub session_id: String,
    /// The device.
    pub device: String,
    /// The rule (or grant, or break-glass) that permitted it.
    pub rule: String,
    /// When it ends at the latest (Unix seconds).
    pub ends_at_unix: i64,
    /// What ends it then.
    pub end_reason_if_uncut: String,
}

/// One open device session, in the browser's hands.
pub struct DeviceSession {
    /// What the gateway said when it opened.
    pub opened: Opened,
    /// The device's bytes, and the end.
    pub reader: SessionReader,
    /// The user's bytes.
    pub writer: SessionWriter,
}

/// What came from the device side.
#[derive(Debug, PartialEq, Eq)]
pub enum FromDevice {
    /// Device bytes (what the recording holds, after the session's stages).
    Data(Vec<u8>),
    /// The device finished its direction (half-close); a `Closed` or the end follows.
    Eof,
    /// The gateway ended the session, and why (shown to the user as is).
    Closed(String),
    /// The session's stream ended without a reason (the gateway stopped).
    Gone,
}

/// Reads the device's side of a session.
pub struct SessionReader {
    inner: FrameReader<ReadHalf<DuplexStream>>,
}

impl SessionReader {
    /// The next thing from the device side. After [`FromDevice::Closed`] or
    /// [`FromDevice::Gone`] there is nothing more.
    pub async fn next(&mut self) -> FromDevice {
        match self.inner.next().await {
            Ok(Some(Inbound::Data(bytes))) => FromDevice::Data(bytes.to_vec()),
            Ok(Some(Inbound::Eof)) => FromDevice::Eof,
            Ok(Some(Inbound::Control(raw))) => match frame::decode(&raw) {
                Ok(Some((Frame::Response(Response::Closed { reason }), _))) => {
                    FromDevice::Closed(reason)
                }
                _ => FromDevice::Gone,
            },
            Ok(None) | Err(_) => FromDevice::Gone,
        }
    }
}

/// Writes the user's side of a session. Dropping it (and the reader) ends the session as
/// "client gone", like closing `ward connect`.
pub struct SessionWriter {
    inner: FrameWriter<WriteHalf<DuplexStream>>,
}

impl SessionWriter {
    /// Send the user's bytes to the device (through the session's stages and recorder).
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        for chunk in bytes.chunks(crate::datapath::CHUNK) {
            self.inner.write_data(chunk).await?;
        }
        Ok(())
    }

    /// Finish the user's direction (half-close).
    pub async fn eof(&mut self) -> io::Result<()> {
        self.inner.write_eof().await
    }
}

/// Open a session to `device` as `authed` (`break_glass`: the justification of an emergency
/// open), through the gateway's session pipeline. A refusal is an [`ApiError`] whose reason is
/// the gateway's own sentence (policy's denial, an unreachable device, a recording that cannot
/// be written), with 403 for a denial and 502/503 for the rest.
pub async fn open(
    state: &WebState,
    authed: &Authed,
    device: &str,
    break_glass: Option<String>,
) -> Result<DeviceSession, ApiError> {
    let (ours, theirs) = tokio::io::duplex(DUPLEX_BUFFER);
    let (their_read, their_write) = tokio::io::split(theirs);
    let opening = crate::session::Opening {
        identity: Arc::new(authed.identity.clone()),
        principal: authed.principal.clone(),
        peer: authed.peer,
        transport: "web",
        device: device.to_owned(),
        break_glass,
    };
    tokio::spawn(crate::session::open_session(
        state.shared.clone(),
        opening,
        FrameReader::new(their_read),
        FrameWriter::new(their_write),
    ));
    let (our_read, our_write) = tokio::io::split(ours);
    let mut reader = FrameReader::new(our_read);
    let first = match reader.next().await {
        Ok(Some(Inbound::Control(raw))) => frame::decode(&raw).ok().flatten(),
        _ => None,
    };
    let refused = |status, reason: String| Err(ApiError::new(status, reason));
    match first {
        Some((
            Frame::Response(Response::Opened {
                session_id,
                device,
                rule,
                ends_at_unix,
                end_reason_if_uncut,
            }),
            _,
        )) => Ok(DeviceSession {
            opened: Opened {
                session_id,
                device,
                rule,
                ends_at_unix,
                end_reason_if_uncut,
            },
            reader: SessionReader { inner: reader },
            writer: SessionWriter {
                inner: FrameWriter::new(our_write),
            },
        }),
        Some((Frame::Response(Response::Denied { reason }), _)) => {
            refused(StatusCode::FORBIDDEN, reason)
        }
        Some((Frame::Response(Response::Error { code, message }), _)) => {
            refused(status_of(code), message)
        }
        _ => refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "the gateway ended the session before it opened; try again".into(),
        ),
    }
}

/// The HTTP status for a session refusal's error class.
fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::DeviceUnreachable | ErrorCode::DeviceTimeout => StatusCode::BAD_GATEWAY,
        ErrorCode::Overloaded | ErrorCode::LoginBusy => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::TotpReused => StatusCode::UNAUTHORIZED,
        ErrorCode::ShuttingDown | ErrorCode::RecordingUnavailable | ErrorCode::Internal => {
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}
