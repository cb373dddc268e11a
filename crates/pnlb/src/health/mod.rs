//! Health checks and the backend lifecycle.
//!
//! - [`probe`]: one check of one backend (tcp, http, https, udp, exec);
//! - [`exec`]: an exec check's command, as its user, in its process group;
//! - [`monitor`]: a checking thread per checked backend, results to the daemon;
//! - [`lifecycle`]: rise/fall state per backend and the weights to publish
//!   (down = no new flows, slow start, fallback when all are down).

pub mod exec;
pub mod lifecycle;
pub mod monitor;
pub mod probe;
