//! The RFB (VNC) protocol layer: types, handshakes, messages, encoders and decoders.
//!
//! Sans-IO: parsers take the bytes received so far and either finish one unit, ask for
//! more (changing nothing), or fail with a typed [`Error`]. [`io`] drives them from tokio.

pub mod client_msg;
pub mod decode;
pub mod encode;
pub mod encoding;
pub mod error;
pub mod fb;
pub mod handshake;
pub mod io;
pub mod pixel;
pub mod server_msg;
mod wire;

pub use client_msg::{parse_client_message, ClientLimits, ClientMessage, Screen};
pub use decode::{ClientDecoder, DecoderLimits, ServerEvent};
pub use encode::{bench_encode_frame, colour_map_message, EncoderState};
pub use encoding::ClientEncodings;
pub use error::{Error, Result};
pub use fb::{Framebuffer, Rect};
pub use pixel::{Packer, PixelFormat};
pub use server_msg::{ServerMessage, UpdateWriter};
