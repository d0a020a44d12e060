//! `tags.rename` (#23): a policy's destination tag differs from the source
//! tag (`{tag}-mirror`) through copy, the no-op pass, verify and prune, and
//! maps back exactly through failover and failback — against real registries.

use testkit::image::{self, Flavor};

use crate::policies::{push_tags, write};
use crate::support::{Scratch, policy_verb, regferry, registries};

#[tokio::test(flavor = "multi_thread")]
async fn tags_rename_copies_verifies_and_prunes_only_its_own_tags() {
    let (src, dst, s, d) = registries();
    let one = image::image(Flavor::Oci, "app-1.0", vec![image::layer(Flavor::Oci, "app-1.0", 300)]);
    s.push("team/app", "1.0", &one).await;
    push_tags(&s, "team/app", &["x"], "app").await;
    // A signature companion is named by its subject's digest: never renamed.
    let sig = image::signature_tag(&one.digest);
    s.push("team/app", &sig, &image::signature(&one)).await;
    let scratch = Scratch::new();
    let policy = |template: &str| {
        format!(
            "name: tr\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\ntags:\n  rename: '{template}'\ndelete: true\nmax_delete: 100%\n",
            src.url, dst.url
        )
    };
    // policy check refuses templates that cannot be mapped back or make bad tags.
    for (template, why) in [("mirror", "has no {tag}"), ("{tag}-{tag}", "more than once"), ("{tag}/x", "makes invalid tags")] {
        let policies = write(&scratch, "bad", "p.yaml", &policy(template));
        let check = regferry(&scratch, &["policy", "check", "--offline", &policies], &[]).await;
        assert_eq!(check.code, 2, "{template}: {}\n{}", check.stdout, check.stderr);
        assert!(check.stderr.contains("p.yaml:6: tags.rename") && check.stderr.contains(why), "{template}: {}", check.stderr);
    }

    let policies = write(&scratch, "policies", "p.yaml", &policy("{tag}-mirror"));
    let state = scratch.state();
    let args = ["run", "--policies", policies.as_str(), "--state", state.as_str(), "--json"];
    let run = || regferry(&scratch, &args, &[]);
    let first = run().await;
    first.assert_ok();
    assert_eq!(d.tags("team/app").await, ["1.0-mirror", sig.as_str(), "x-mirror"], "{}", first.stdout);
    assert_eq!(d.head("team/app", &sig).await, s.head("team/app", &sig).await);
    assert_eq!(d.head("team/app", "1.0-mirror").await, s.head("team/app", "1.0").await);
    // The second pass is a no-op.
    let again = run().await;
    again.assert_ok();
    assert_eq!(again.json()[0]["destinations"][0]["report"]["counts"]["tags_copied"], 0, "{}", again.stdout);

    // A tag someone else pushed that does not fit the template is not ours:
    // verify does not count it, prune never touches it.
    push_tags(&d, "team/app", &["foreign"], "foreign").await;
    let verify = regferry(&scratch, &["verify", "--policies", &policies, "--state", &state], &[]).await;
    assert_eq!(verify.code, 0, "{}\n{}", verify.stdout, verify.stderr);
    assert!(verify.stdout.contains("3 identical"), "{}", verify.stdout);

    // x disappears at the source: x-mirror goes, 1.0-mirror and foreign stay.
    let x = s.head("team/app", "x").await.expect("x").0;
    s.delete_manifest("team/app", &x).await;
    let pruned = run().await;
    pruned.assert_ok();
    assert_eq!(pruned.json()[0]["destinations"][0]["deleted"], serde_json::json!(["team/app:x-mirror"]), "{}", pruned.stdout);
    assert_eq!(d.tags("team/app").await, ["1.0-mirror", "foreign", sig.as_str()]);
    let verify = regferry(&scratch, &["verify", "--policies", &policies, "--state", &state], &[]).await;
    assert_eq!(verify.code, 0, "{}\n{}", verify.stdout, verify.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn tag_and_repository_renames_round_trip_through_failover_and_failback() {
    let (primary, dr, p, d) = registries();
    push_tags(&p, "team/a/web", &["1.0"], "web").await;
    let scratch = Scratch::new();
    let text = format!(
        "name: dr\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\n    namespace: mirror\n\
         repositories:\n  include: ['team/**']\n  rename:\n    - {{ from: 'team/([^/]+)/([^/]+)', to: 'team-$1-$2' }}\n\
         tags:\n  rename: 'v{{tag}}-dr'\ntrigger: {{ interval: 1h }}\n",
        primary.url, dr.url
    );
    let policies = write(&scratch, "policies", "p.yaml", &text);
    regferry(&scratch, &["policy", "check", &policies], &[]).await.assert_ok();
    let state = scratch.state();
    let cmd = |verb: &'static str, extra: &'static [&'static str]| policy_verb(&scratch, &policies, &state, "dr", verb, extra);
    cmd("run", &[]).await.assert_ok();
    assert_eq!(d.tags("mirror/team-a-web").await, ["v1.0-dr"]);
    assert_eq!(d.head("mirror/team-a-web", "v1.0-dr").await, p.head("team/a/web", "1.0").await);

    // Failover; work continues at DR under the DR names and maps back exactly.
    cmd("failover", &[]).await.assert_ok();
    push_tags(&d, "mirror/team-a-web", &["v2.0-dr"], "dr-web").await;
    // A tag pushed at DR that does not fit the template is not the policy's.
    push_tags(&d, "mirror/team-a-web", &["scratch"], "dr-scratch").await;
    cmd("run", &[]).await.assert_ok();
    assert_eq!(p.head("team/a/web", "2.0").await, d.head("mirror/team-a-web", "v2.0-dr").await);
    assert_eq!(p.tags("team/a/web").await, ["1.0", "2.0"], "nothing arrives under a DR tag name");
    let verify = cmd("verify", &["--json"]).await;
    assert_eq!(verify.code, 0, "{}\n{}", verify.stdout, verify.stderr);
    assert_eq!(verify.json()["results"][0]["reversed"], true);

    // Failback: DR's last change goes home, the direction is restored.
    push_tags(&d, "mirror/team-a-web", &["v3.0-dr"], "dr-web").await;
    cmd("failback", &[]).await.assert_ok();
    assert_eq!(p.head("team/a/web", "3.0").await, d.head("mirror/team-a-web", "v3.0-dr").await);
    cmd("run", &[]).await.assert_ok();
    assert_eq!(d.tags("mirror/team-a-web").await, ["scratch", "v1.0-dr", "v2.0-dr", "v3.0-dr"]);
    let verify = cmd("verify", &["--deep"]).await;
    assert_eq!(verify.code, 0, "{}\n{}", verify.stdout, verify.stderr);
    assert!(verify.stdout.contains("3 identical"), "{}", verify.stdout);
}
