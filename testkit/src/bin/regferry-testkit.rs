//! `regferry-testkit`: start throwaway registries and fill them with
//! synthetic images, for the demo and the benchmark.
//!
//!   regferry-testkit serve --count 2       # prints REGISTRY_0=… lines, runs until SIGINT/SIGTERM
//!   regferry-testkit serve --count 2 --tls # … each behind an nginx TLS front (test CA: CA=…, CERT_DIR=…)
//!   regferry-testkit serve --count 2 --link-latency-ms 40 --link-bandwidth 50000000   # … behind a slow link
//!   regferry-testkit fill --registry http://127.0.0.1:5001 --repos 20 --tags 10
//!   regferry-testkit rawcopy-plan --from URL > blobs.tsv      # untimed: the distinct blobs
//!   regferry-testkit rawcopy --from URL --to URL --list blobs.tsv   # the raw limit
//!   regferry-testkit rawimages --from URL --to URL --list blobs.tsv # … plus mounts and manifests
//!   regferry-testkit compare --from URL --to URL --dest-prefix mirror [--basename]
//!   regferry-testkit pulp --front [--token]   # Pulp's container registry: PULP_URL=…, PULP_CREDS=…
//!   regferry-testkit proxy --upstream URL --bandwidth 1500000 --latency-ms 20   # a slow link
//!   regferry-testkit proxy --upstream URL --pull-quota 16   # Docker Hub's pull quota

use std::time::Duration;

use clap::{Parser, Subcommand};
use testkit::dataset::{self, Spec};
use testkit::rawcopy::{self, BlobRef, Naming};
use testkit::tls::Pki;
use testkit::{Access, FaultProxy, Faults, Front, Nginx, Registry, TestRegistry};

#[derive(Parser)]
#[command(about = "Throwaway registries and synthetic images for regferry's demo and benchmark")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// What both raw copies take.
#[derive(clap::Args)]
struct RawArgs {
    #[arg(long)]
    from: String,
    #[arg(long)]
    to: String,
    /// The output of rawcopy-plan.
    #[arg(long)]
    list: std::path::PathBuf,
    /// Destination repositories are PREFIX/<source repository>.
    #[arg(long, default_value = "raw")]
    dest_prefix: String,
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start COUNT docker-registry processes on free loopback ports; print their URLs; stop them on SIGINT/SIGTERM.
    Serve {
        #[arg(long, default_value_t = 2)]
        count: usize,
        /// Put an nginx front terminating TLS (certificate from a throwaway CA) before each registry;
        /// prints CA=<PEM file> and CERT_DIR=<directory with ca.crt, for skopeo's --*-cert-dir>.
        #[arg(long)]
        tls: bool,
        /// Put the fault proxy before each registry as a slow link: this much latency per request…
        #[arg(long, default_value_t = 0)]
        link_latency_ms: u64,
        /// … and at most this many bytes per second each way (all connections together; 0: no cap).
        #[arg(long, default_value_t = 0)]
        link_bandwidth: u64,
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
        /// Instead of a data set: --repos × --tags tags, all of one small image per
        /// repository (pushed once, then tagged concurrently; layer options ignored).
        #[arg(long)]
        same_image: bool,
    },
    /// List every distinct blob reachable from the tags of a registry (repo, digest, size; tab-separated).
    RawcopyPlan {
        #[arg(long)]
        from: String,
    },
    /// The raw limit: copy each blob of --list once (GET streamed into POST + PUT), nothing else.
    Rawcopy(RawArgs),
    /// The floor of a whole copy: rawcopy's blobs, then one listing per repository, one mount per further
    /// repository a blob is in, each manifest GET once and PUT once; no HEADs, checks, retries or state.
    Rawimages(RawArgs),
    /// A slow link in front of a registry: the fault proxy with only bandwidth and latency;
    /// prints PROXY=URL and runs until SIGINT/SIGTERM.
    Proxy {
        #[arg(long)]
        upstream: String,
        /// Bytes per second in each direction (0: unlimited).
        #[arg(long, default_value_t = 0)]
        bandwidth: u64,
        /// Added to every request.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Answer as Docker Hub does with a pull quota of N manifest GETs
        /// (RateLimit headers on manifest answers, then 429 TOOMANYREQUESTS).
        #[arg(long)]
        pull_quota: Option<u64>,
        /// The quota window announced (w=), seconds.
        #[arg(long, default_value_t = 21600)]
        quota_window_secs: u64,
    },
    /// Print the benchmark report of a bench/run.sh output directory.
    BenchReport {
        #[arg(long)]
        dir: std::path::PathBuf,
    },
    /// Compare every source tag with the destination by digest and media type; exit 1 on any difference.
    Compare {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[arg(long, default_value = "")]
        dest_prefix: String,
        /// Destination repositories are named by the source's last path component (skopeo sync).
        #[arg(long)]
        basename: bool,
    },
    /// Start a throwaway PostgreSQL cluster on a free loopback port, print
    /// `POSTGRES_URL=postgres://…` (a database `regferry`) and `READY=1`,
    /// and remove it on SIGINT/SIGTERM.
    Postgres,
    /// Start Pulp's container registry (see testkit::pulp; installed by
    /// scripts/deps.sh --test), print `PULP_URL=…`, `PULP_CREDS=user:pw`
    /// and `READY=1`, and stop it on SIGINT/SIGTERM.
    Pulp {
        /// Bearer tokens from Pulp's token service instead of basic auth.
        #[arg(long)]
        token: bool,
        /// Put an nginx front before the API and the content app.
        #[arg(long)]
        front: bool,
    },
}

/// Say `READY=1` (what the scripts wait for), then wait for SIGINT or SIGTERM.
async fn ready_until_stopped() {
    println!("READY=1");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[tokio::main]
async fn main() {
    match Cli::parse().command {
        Cmd::Postgres => {
            let pg = testkit::postgres::TestPostgres::start();
            println!("POSTGRES_URL={}", pg.url());
            println!("POSTGRES_DIR={}", pg.dir().display());
            ready_until_stopped().await;
            drop(pg);
        }
        Cmd::Pulp { token, front } => {
            let auth = if token { testkit::PulpAuth::Token } else { testkit::PulpAuth::Basic };
            let pulp = testkit::TestPulp::start(testkit::PulpOptions { auth, front });
            println!("PULP_URL={}", pulp.url);
            println!("PULP_CREDS={}", pulp.creds());
            println!("PULP_DIR={}", pulp.dir().display());
            ready_until_stopped().await;
            drop(pulp);
        }
        Cmd::Serve { count, tls, link_latency_ms, link_bandwidth } => {
            let registries: Vec<TestRegistry> = (0..count).map(|_| TestRegistry::start()).collect();
            let link = link_latency_ms > 0 || link_bandwidth > 0;
            let faults = Faults { latency: Duration::from_millis(link_latency_ms), bandwidth: link_bandwidth, ..Faults::default() };
            let proxies: Vec<FaultProxy> =
                if link { registries.iter().map(|r| FaultProxy::start(&r.url, faults.clone())).collect() } else { Vec::new() };
            let pki = tls.then(Pki::new);
            let fronts: Vec<Nginx> = match &pki {
                Some(pki) => (0..count)
                    .map(|i| {
                        let upstream = proxies.get(i).map_or(registries[i].url.as_str(), |p| p.url.as_str());
                        Nginx::start(upstream, Front { tls: Some((pki.cert.clone(), pki.key.clone())), ..Front::default() })
                    })
                    .collect(),
                None => Vec::new(),
            };
            if let Some(pki) = &pki {
                let dir = pki.path("certs.d");
                std::fs::create_dir_all(&dir).expect("cert dir");
                std::fs::copy(&pki.ca, dir.join("ca.crt")).expect("copy CA");
                println!("CA={}", pki.ca.display());
                println!("CERT_DIR={}", dir.display());
            }
            for (i, r) in registries.iter().enumerate() {
                let front = fronts.get(i).map(|f| f.url.clone()).or_else(|| proxies.get(i).map(|p| p.url.clone()));
                println!("REGISTRY_{i}={}", front.as_deref().unwrap_or(&r.url));
                println!("REGISTRY_{i}_BACKEND={}", r.url);
                println!("REGISTRY_{i}_STORAGE={}", r.storage().display());
                println!("REGISTRY_{i}_LOG={}", r.log_path().display());
                println!("REGISTRY_{i}_PID={}", r.pid());
            }
            ready_until_stopped().await;
            drop(fronts);
            drop(proxies);
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
            same_image,
        } => {
            let reg = Registry::new(&registry, Access::Anonymous);
            if same_image {
                let n = dataset::fill_retagged(&reg, &prefix, repos, tags, 32).await;
                println!("pushed {n} tags in {repos} repositories (one small image per repository, tagged {tags} times)");
                return;
            }
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
        Cmd::RawcopyPlan { from } => {
            let reg = Registry::new(&from, Access::Anonymous);
            for b in rawcopy::plan(&reg).await {
                println!("{}", b.to_line());
            }
        }
        Cmd::Rawcopy(RawArgs { from, to, list, dest_prefix, concurrency }) => {
            let s = rawcopy::copy(&from, &to, &dest_prefix, &read_blob_list(&list), concurrency).await;
            println!(
                "{{\"blobs\":{},\"bytes\":{},\"requests\":{{\"source\":{},\"destination\":{}}},\"elapsed_seconds\":{:.3}}}",
                s.blobs, s.bytes, s.requests_source, s.requests_destination, s.seconds
            );
        }
        Cmd::Rawimages(RawArgs { from, to, list, dest_prefix, concurrency }) => {
            let s = testkit::rawimages::copy(&from, &to, &dest_prefix, &read_blob_list(&list), concurrency).await;
            println!(
                "{{\"blobs\":{},\"bytes\":{},\"tags\":{},\"elapsed_seconds\":{:.3}}}",
                s.blobs, s.bytes, s.tags, s.seconds
            );
        }
        Cmd::Proxy { upstream, bandwidth, latency_ms, pull_quota, quota_window_secs } => {
            let faults = testkit::Faults {
                bandwidth,
                latency: std::time::Duration::from_millis(latency_ms),
                pull_quota,
                quota_window_secs,
                ..testkit::Faults::default()
            };
            let proxy = testkit::FaultProxy::start(&upstream, faults);
            println!("PROXY={}", proxy.url);
            ready_until_stopped().await;
            drop(proxy);
        }
        Cmd::BenchReport { dir } => print!("{}", testkit::bench_report::report(&dir)),
        Cmd::Compare { from, to, dest_prefix, basename } => {
            let naming = if basename { Naming::Basename } else { Naming::Full };
            let (compared, diffs) = rawcopy::compare(&from, &to, &dest_prefix, naming).await;
            for d in diffs.iter().take(20) {
                eprintln!("differs: {d}");
            }
            println!("compared {compared} tags: {} differ", diffs.len());
            if !diffs.is_empty() || compared == 0 {
                std::process::exit(1);
            }
        }
    }
}

/// The blobs of a `rawcopy-plan` output file.
fn read_blob_list(path: &std::path::Path) -> Vec<BlobRef> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines().filter_map(BlobRef::from_line).collect()
}
