//! The pressure scenario runs to completion with every page checked, kswapd and swap both
//! work, and the chart is written.

#[test]
fn pressure_scenario_runs_and_draws() {
    let dir = tempfile::tempdir().unwrap();
    let r = mmkit_sim::pressure::run(128 << 20, dir.path()).unwrap();
    let stat = |n: &str| r.stats.iter().find(|s| s.0 == n).unwrap().1;
    assert!(stat("pswpout") > 0 && stat("pswpin") > 0);
    assert!(stat("pgsteal_kswapd") > 0, "kswapd reclaimed");
    assert!(!r.kswapd_runs.is_empty());
    // Free memory went down to the watermarks and was held near them.
    let low_point = r.samples.iter().map(|s| s.free).min().unwrap();
    let high = r.samples[0].wmarks[2];
    assert!(low_point < high * 2, "pressure reached the watermarks");
    let svg = dir.path().join("p.svg");
    mmkit_sim::pressure::draw_svg(&r, &svg).unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") && text.contains("polyline") && text.contains("kswapd"));
}
