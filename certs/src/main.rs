//! `chat-certs`: make a local CA, issue node certificates signed by it, print fingerprints.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;
use chat_certs::{CA_CERT_FILE, CA_KEY_FILE, NODE_CERT_FILE, NODE_KEY_FILE, Pair};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    version,
    about = "Certificates for chat nodes: a local CA and node certificates signed by it"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a CA: DIR/ca.pem (give it to clients) and DIR/ca.key (keep it secret).
    Ca {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        #[arg(long, default_value = "chat local CA")]
        name: String,
        /// Replace an existing CA (every node certificate it signed stops being trusted).
        #[arg(long)]
        force: bool,
    },
    /// Issue a node certificate signed by the CA in --ca-dir: OUT/node.pem and OUT/node.key.
    Node {
        #[arg(long, default_value = "certs")]
        ca_dir: PathBuf,
        /// Where to write the node's files (default: the CA's directory).
        #[arg(long)]
        out: Option<PathBuf>,
        /// A DNS name clients use to reach the node (repeatable).
        #[arg(long = "dns", default_value = "localhost")]
        dns: Vec<String>,
        /// An IP address clients use to reach the node (repeatable).
        #[arg(long = "ip")]
        ips: Vec<IpAddr>,
    },
    /// Print the SHA-256 fingerprint of each certificate in a PEM file.
    Fingerprint { file: PathBuf },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Ca { dir, name, force } => {
            let cert = dir.join(CA_CERT_FILE);
            if cert.exists() && !force {
                anyhow::bail!("{} exists; pass --force to replace the CA", cert.display());
            }
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let ca = chat_certs::generate_ca(&name)?;
            ca.write(&cert, &dir.join(CA_KEY_FILE))?;
            println!("CA certificate: {}", cert.display());
            println!("SHA-256: {}", chat_certs::fingerprint(&ca.cert_der()?));
        }
        Command::Node { ca_dir, out, dns, ips } => {
            let ca = Pair::read(&ca_dir.join(CA_CERT_FILE), &ca_dir.join(CA_KEY_FILE))
                .context("reading the CA (create one with `chat-certs ca`)")?;
            let out = out.unwrap_or(ca_dir);
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let node = chat_certs::issue_node(&ca, &dns, &ips)?;
            let cert = out.join(NODE_CERT_FILE);
            node.write(&cert, &out.join(NODE_KEY_FILE))?;
            println!("node certificate: {} (for {})", cert.display(), names(&dns, &ips));
            println!("SHA-256: {}", chat_certs::fingerprint(&node.cert_der()?));
        }
        Command::Fingerprint { file } => {
            for cert in chat_certs::load_certs(&file)? {
                println!("{}", chat_certs::fingerprint(&cert));
            }
        }
    }
    Ok(())
}

fn names(dns: &[String], ips: &[IpAddr]) -> String {
    dns.iter().cloned().chain(ips.iter().map(IpAddr::to_string)).collect::<Vec<_>>().join(", ")
}
