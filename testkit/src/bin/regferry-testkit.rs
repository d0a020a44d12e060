//! `regferry-testkit`: start throwaway registries and fill them with
//! synthetic images, for the demo and the benchmark.
//!
//!   regferry-testkit serve --count 2       # prints REGISTRY_0=… lines, runs until SIGINT/SIGTERM
//!   regferry-testkit fill --registry http://127.0.0.1:5001 --repos 20 --tags 10

use clap::{Parser, Subcommand};
use testkit::dataset::{self, Spec};
use testkit::{Access, Registry, TestRegistry};

#[derive(Parser)]
#[command(about = "Throwaway registries and synthetic images for regferry's demo and benchmark")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start COUNT docker-registry processes on free loopback ports; print their URLs; stop them on SIGINT/SIGTERM.
    Serve {
        #[arg(long, default_value_t = 2)]
        count: usize,
    },
    /// Push a synthetic data set.
    Fill {
        #[arg(long)]
        registry: String,
        #[arg(long, default_value = "bench")]
        prefix: String,
        #[arg(long, default_value_t = 4)]
        repos: usize,
        #[arg(long, default_value_t = 3)]
        tags: usize,
        #[arg(long, default_value_t = 2)]
        base_layers: usize,
        /// Bytes per shared base layer.
        #[arg(long, default_value_t = 65536)]
        base_size: usize,
        /// Bytes of the per-repository layer.
        #[arg(long, default_value_t = 32768)]
        repo_size: usize,
        /// Bytes of the per-tag layer.
        #[arg(long, default_value_t = 16384)]
        tag_size: usize,
        /// Every n-th tag is a multi-arch index (0: none).
        #[arg(long, default_value_t = 3)]
        multi_arch_every: usize,
        #[arg(long)]
        no_signatures: bool,
        /// Instead of a data set: one image whose single layer has this many bytes.
        #[arg(long)]
        big_layer: Option<u64>,
    },
}

#[tokio::main]
async fn main() {
    match Cli::parse().command {
        Cmd::Serve { count } => {
            let registries: Vec<TestRegistry> = (0..count).map(|_| TestRegistry::start()).collect();
            for (i, r) in registries.iter().enumerate() {
                println!("REGISTRY_{i}={}", r.url);
                println!("REGISTRY_{i}_STORAGE={}", r.storage().display());
            }
            println!("READY=1");
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            drop(registries);
        }
        Cmd::Fill {
            registry,
            prefix,
            repos,
            tags,
            base_layers,
            base_size,
            repo_size,
            tag_size,
            multi_arch_every,
            no_signatures,
            big_layer,
        } => {
            let reg = Registry::new(&registry, Access::Anonymous);
            if let Some(size) = big_layer {
                let repo = format!("{prefix}/big");
                let digest = reg.push_random_blob(&repo, "big-layer", size).await;
                let image = testkit::image::image_with_external_layers(testkit::image::Flavor::Oci, "big", &[(digest, size)]);
                reg.push(&repo, "v1", &image).await;
                println!("pushed {repo}:v1 with one {size}-byte layer");
                return;
            }
            let spec = Spec {
                prefix,
                repos,
                tags_per_repo: tags,
                base_layers,
                base_layer_size: base_size,
                repo_layer_size: repo_size,
                tag_layer_size: tag_size,
                multi_arch_every,
                signatures: !no_signatures,
            };
            let pushed = dataset::fill(&reg, &spec).await;
            println!(
                "pushed {} tags in {} repositories ({} bytes of distinct blobs)",
                pushed.len(),
                spec.repos,
                dataset::distinct_blob_bytes(&pushed)
            );
        }
    }
}
