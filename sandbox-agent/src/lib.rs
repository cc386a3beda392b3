//! The process Cordon runs inside each sandbox: it executes commands for the controller over
//! an HTTP API on the sandbox's own address, authenticated by a per-session token.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | /healthz | `{"status":"ok"}` (no token needed: the controller polls it while the sandbox starts) |
//! | POST | /exec | run `{"argv": [...], "cwd"?, "env"?, "timeout_ms"?, "stdin"?}`; the answer streams [`ExecEvent`]s as JSON lines |
//! | POST | /tool | one CMA tool call `{"name", "input"}` ([`tools`]); answers `{"is_error", "text"}` |
//! | POST | /browser | one browser tool call `{"name", "input"}` ([`browser`]); answers `{"is_error", "content": [blocks]}` |
//! | POST | /browser/warm | starts the browser in the background if the image has one; 202 `{"browser": bool}` |
//! | GET | /pty | a WebSocket to a shell on a pseudo-terminal ([`pty`]): the dashboard's terminal |

pub mod browser;
pub mod exec;
pub mod pty;
pub mod server;
pub mod tools;

pub use exec::{ExecEvent, ExecRequest};
pub use server::{AgentState, router};
