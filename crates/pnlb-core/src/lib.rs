//! pnlb-core: the load balancer's pure logic, free of I/O.
//!
//! - [`config`]: the TOML model (config contract v1) and its validation;
//! - [`health`]: rise/fall health state and slow-start weights;
//! - [`maglev`]: the weighted Maglev lookup-table builder (NSDI'16 §3.4);
//! - [`sched`]: every scheduler, one file each, behind one trait;
//! - [`jhash`]: the flow hash shared with the XDP program.

pub mod config;
pub mod duration;
pub mod health;
pub mod jhash;
pub mod maglev;
pub mod prefix;
pub mod sched;
