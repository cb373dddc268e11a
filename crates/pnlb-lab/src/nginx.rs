//! nginx as a real server: one instance per server namespace, answering
//! `/` with its own name, `/whoami` with its name and the client address
//! it sees, and `/blob` with a 1 MiB file.

use std::path::Path;

use crate::process::LabProcess;
use crate::LabError;

pub const BLOB_SIZE: usize = 1 << 20;

pub fn start(ns: &str, name: &str, dir: &Path) -> Result<LabProcess, LabError> {
    let www = dir.join("www");
    std::fs::create_dir_all(&www).map_err(|err| io_error(&www, err))?;
    let blob: Vec<u8> = (0..BLOB_SIZE).map(|i| (i % 251) as u8).collect();
    std::fs::write(www.join("blob"), blob).map_err(|err| io_error(&www, err))?;
    let d = dir.display();
    let config = format!(
        r#"worker_processes 1;
worker_rlimit_nofile 20000;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    sendfile off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 80 reuseport;
        listen [::]:80 ipv6only=on reuseport;
        root {d}/www;
        location = / {{ default_type text/plain; return 200 "{name}\n"; }}
        location = /whoami {{ default_type text/plain; return 200 "{name} $remote_addr\n"; }}
        location /blob {{ default_type application/octet-stream; }}
    }}
}}
"#
    );
    let config_path = dir.join("nginx.conf");
    std::fs::write(&config_path, config).map_err(|err| io_error(&config_path, err))?;
    let config_arg = config_path.display().to_string();
    LabProcess::spawn(
        ns,
        &format!("nginx {name}"),
        "nginx",
        &["-c", &config_arg, "-g", "daemon off;"],
    )
}

fn io_error(path: &Path, err: std::io::Error) -> LabError {
    LabError::Command {
        command: format!("write {}", path.display()),
        reason: err.to_string(),
    }
}
