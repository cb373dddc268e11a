//! nginx as a real server: one instance per server namespace, answering
//! `/` with its own name, `/whoami` with its name and the client address
//! it sees, and `/blob` with a 1 MiB file, on port 80 and (self-signed
//! TLS) 443.

use std::path::Path;

use crate::process::LabProcess;
use crate::LabError;

pub const BLOB_SIZE: usize = 1 << 20;

/// A self-signed certificate for the lab's HTTPS (in `lab_dir`).
pub fn make_certificate(lab_dir: &Path) -> Result<(), LabError> {
    let (key, cert) = (lab_dir.join("tls.key"), lab_dir.join("tls.crt"));
    let (key, cert) = (key.display().to_string(), cert.display().to_string());
    crate::netns::run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=pnlb-lab",
            "-keyout",
            &key,
            "-out",
            &cert,
        ],
    )?;
    Ok(())
}

pub fn start(ns: &str, name: &str, dir: &Path, lab_dir: &Path) -> Result<LabProcess, LabError> {
    let www = dir.join("www");
    std::fs::create_dir_all(&www).map_err(|err| io_error(&www, err))?;
    let blob: Vec<u8> = (0..BLOB_SIZE).map(|i| (i % 251) as u8).collect();
    std::fs::write(www.join("blob"), blob).map_err(|err| io_error(&www, err))?;
    let d = dir.display();
    let l = lab_dir.display();
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
        listen 443 ssl reuseport;
        listen [::]:443 ssl ipv6only=on reuseport;
        ssl_certificate {l}/tls.crt;
        ssl_certificate_key {l}/tls.key;
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
