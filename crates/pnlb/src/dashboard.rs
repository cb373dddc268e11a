//! The web dashboard `pnlb run` serves at `/` of its API: one static page
//! that polls `/api/v1/status` every second and shows services, backends,
//! health and live rates (computed from successive counter readings).

pub const PAGE: &str = include_str!("dashboard.html");
