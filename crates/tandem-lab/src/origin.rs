//! Origin servers inside the topology's origin namespace, listening on
//! [`ORIGIN_IP`]:80: the project's own Range-capable server (`tandem origin`),
//! nginx with a throw-away config (Range-capable, strong ETags), or Python's
//! `http.server` (no Range support).

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::netns;
use crate::topology::{ORIGIN_IP, Proc, Topology};

/// Which server to run.
#[derive(Clone, Debug)]
pub enum OriginKind {
    /// `<exe> origin --listen 203.0.113.10:80 --dir DIR [extra args]`.
    Tandem {
        /// Path of the tandem binary.
        exe: PathBuf,
        /// Extra arguments, e.g. `--no-ranges` or `--rate BPS`.
        extra: Vec<String>,
    },
    /// nginx (package nginx-light) with a generated config.
    Nginx,
    /// `python3 -m http.server` (no Range support).
    Python,
}

/// A running origin.
pub struct Origin {
    proc: Proc,
    dir: PathBuf,
}

impl Origin {
    /// The directory it serves.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// `http://203.0.113.10/<name>`.
    pub fn url(&self, name: &str) -> String {
        format!("http://{ORIGIN_IP}/{name}")
    }
    /// The server process.
    pub fn proc(&self) -> &Proc {
        &self.proc
    }
}

/// Starts an origin serving `dir` and waits until it accepts connections.
pub fn start_origin(topo: &Topology, kind: &OriginKind, dir: &Path) -> Result<Origin> {
    let ns = topo.origin_ns();
    let listen = format!("{ORIGIN_IP}:80");
    let dir_s = dir.to_string_lossy().into_owned();
    let proc = match kind {
        OriginKind::Tandem { exe, extra } => {
            let mut argv = vec![
                exe.to_string_lossy().into_owned(),
                "origin".into(),
                "--listen".into(),
                listen,
                "--dir".into(),
                dir_s,
            ];
            argv.extend(extra.iter().cloned());
            topo.spawn(&ns, "origin", &argv)?
        }
        OriginKind::Nginx => {
            let conf_dir = topo.workdir().join("nginx");
            std::fs::create_dir_all(&conf_dir)?;
            let conf = conf_dir.join("nginx.conf");
            std::fs::write(&conf, nginx_config(dir, &conf_dir))
                .with_context(|| format!("writing {}", conf.display()))?;
            let conf_s = conf.to_string_lossy().into_owned();
            topo.spawn(&ns, "origin-nginx", &["nginx", "-c", &conf_s])?
        }
        OriginKind::Python => topo.spawn(
            &ns,
            "origin-python",
            &[
                "python3",
                "-m",
                "http.server",
                "80",
                "--bind",
                &ORIGIN_IP.to_string(),
                "--directory",
                &dir_s,
            ],
        )?,
    };
    let addr = SocketAddr::from((ORIGIN_IP, 80));
    let mut last_err = String::new();
    for _ in 0..250 {
        if let Some(status) = proc.try_wait()? {
            anyhow::bail!("origin exited ({status}); log:\n{}", proc.log());
        }
        match netns::in_ns(&ns, || {
            Ok(TcpStream::connect_timeout(
                &addr,
                Duration::from_millis(200),
            )?)
        }) {
            Ok(_) => {
                return Ok(Origin {
                    proc,
                    dir: dir.to_path_buf(),
                });
            }
            Err(e) => last_err = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!(
        "origin not listening on {addr} after 5 s ({last_err}); log:\n{}",
        proc.log()
    )
}

/// A self-contained nginx config serving `root` on 203.0.113.10:80 in the
/// foreground, as one root process, with all state under `state`.
pub fn nginx_config(root: &Path, state: &Path) -> String {
    let root = root.display();
    let st = state.display();
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {st}/nginx.pid;
error_log {st}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {st}/access.log;
    client_body_temp_path {st}/body;
    proxy_temp_path {st}/proxy;
    fastcgi_temp_path {st}/fastcgi;
    uwsgi_temp_path {st}/uwsgi;
    scgi_temp_path {st}/scgi;
    sendfile on;
    etag on;
    types {{
        video/mp4 mp4;
        application/octet-stream bin;
        text/plain txt;
    }}
    default_type application/octet-stream;
    server {{
        listen {ORIGIN_IP}:80;
        root {root};
    }}
}}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_config_points_at_the_run() {
        let c = nginx_config(Path::new("/tmp/x/www"), Path::new("/tmp/x/nginx"));
        assert!(c.contains("root /tmp/x/www;"));
        assert!(c.contains("listen 203.0.113.10:80;"));
        assert!(c.contains("pid /tmp/x/nginx/nginx.pid;"));
        assert!(c.contains("video/mp4 mp4;"));
    }
}
