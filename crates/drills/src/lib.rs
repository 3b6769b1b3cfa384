//! `drills`: operator tools that exercise a running Voice Kraliki stack. They are not part of
//! the product image (the Dockerfile builds the services and `voice-kraliki` only).
//!
//! ```text
//! drills <shutdown|database|provider|soak|scale> [options]
//!                      reliability drills on loopback (docs/DRILLS.md); each starts the services
//!                      as `voice-kraliki serve <service>` processes: the `voice-kraliki`
//!                      binary next to this one, or `VOICE_KRALIKI_BIN`
//! drills loadgen [...] the same as `voice-kraliki loadgen [...]`: simulated carriers,
//!                      concurrent live calls, turn outcomes and latency table
//! ```

pub mod drill;

/// The live-call load generator lives in `voice-kraliki`'s library; the drills' live calls are
/// its simulated carriers ([`loadgen::one_call`]).
pub use voice_kraliki::loadgen;

pub use voice_kraliki::api_key;

/// The `voice-kraliki` binary that serves the services: `VOICE_KRALIKI_BIN`, else the one next
/// to this binary (cargo builds both into the same directory).
pub fn voice_kraliki_bin() -> std::io::Result<std::path::PathBuf> {
    if let Some(bin) = std::env::var_os("VOICE_KRALIKI_BIN") {
        return Ok(bin.into());
    }
    let me = std::env::current_exe()?;
    let bin = me.with_file_name(format!("voice-kraliki{}", std::env::consts::EXE_SUFFIX));
    if bin.exists() {
        Ok(bin)
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} not found: build it (cargo build -p voice-kraliki) or set VOICE_KRALIKI_BIN", bin.display()),
        ))
    }
}
