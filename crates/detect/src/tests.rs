use std::path::Path;
use std::time::Duration;

use super::*;

fn on() -> DetectionConfig {
    DetectionConfig {
        enabled: true,
        ..DetectionConfig::default()
    }
}

fn refused<'a>(subject: Subject<'a>, reason: &'a str, path: &'a str, now: i64) -> Event<'a> {
    Event {
        subject,
        reason: Some(reason),
        route: Some("accounts"),
        class: None,
        scopes: &[],
        path,
        now,
    }
}

#[test]
fn enumeration_fires_once_at_its_threshold_of_distinct_objects() {
    let d = Detector::new();
    let cfg = on();
    let mut fired = Vec::new();
    let paths: Vec<String> = (0..100).map(|i| format!("/accounts/{i}")).collect();
    for (i, p) in paths.iter().enumerate() {
        // The same object again counts once.
        let again = refused(Subject::Cert("t"), "authz.object_hidden", p, 100);
        for _ in 0..2 {
            if let Some(a) = d.observe(&cfg, &again) {
                fired.push((i + 1, a));
            }
        }
    }
    assert_eq!(fired.len(), 1, "{fired:?}");
    let (at, a) = &fired[0];
    // Linear counting may need one more object after a collision; never fewer.
    assert!((20..=22).contains(at), "{at}");
    assert_eq!(a.detector, Kind::Enumeration);
    assert_eq!(a.action, Action::Alert);
    assert_eq!(a.subject, "cert:t");
    assert_eq!(a.quarantined_until, None);
}

#[test]
fn allowed_requests_and_uncounted_reasons_never_fire() {
    let d = Detector::new();
    let cfg = on();
    for i in 0..1000 {
        let p = format!("/accounts/{i}");
        let mut e = refused(Subject::Client("c"), "token.expired", &p, 1);
        assert_eq!(d.observe(&cfg, &e), None);
        e.reason = None;
        assert_eq!(d.observe(&cfg, &e), None);
        e.reason = Some("binding.replay_store_unavailable");
        assert_eq!(d.observe(&cfg, &e), None);
    }
}

#[test]
fn a_new_window_starts_over() {
    let d = Detector::new();
    let mut cfg = on();
    cfg.detectors[Kind::Replay as usize].threshold = 3;
    cfg.detectors[Kind::Replay as usize].window = Duration::from_secs(10);
    let e = |now| {
        refused(
            Subject::Peer([10, 0, 0, 1].into()),
            "binding.dpop_replay",
            "/",
            now,
        )
    };
    assert!(d.observe(&cfg, &e(0)).is_none());
    assert!(d.observe(&cfg, &e(1)).is_none());
    // Window over: two in the old window and one in the new do not add up.
    assert!(d.observe(&cfg, &e(10)).is_none());
    assert!(d.observe(&cfg, &e(11)).is_none());
    let a = d.observe(&cfg, &e(12)).unwrap();
    assert_eq!(
        (a.detector, a.count, a.subject.as_str()),
        (Kind::Replay, 3, "peer:10.0.0.1")
    );
}

#[test]
fn quarantine_holds_for_its_ttl_and_lifts_early() {
    let d = Detector::new();
    let mut cfg = on();
    cfg.detectors[Kind::CredentialAbuse as usize].threshold = 2;
    cfg.detectors[Kind::CredentialAbuse as usize].action = Action::Quarantine;
    cfg.quarantine_ttl = Duration::from_secs(60);
    let s = Subject::Cert("abc");
    assert_eq!(d.quarantined(&s, 0), None);
    d.observe(&cfg, &refused(s, "token.bad_signature", "/", 0));
    let a = d
        .observe(&cfg, &refused(s, "signature.http_invalid", "/", 0))
        .unwrap();
    assert_eq!(a.quarantined_until, Some(60));
    assert_eq!(d.quarantined(&s, 10), Some(50));
    assert_eq!(d.quarantined(&Subject::Cert("other"), 10), None);
    assert_eq!(d.quarantined(&s, 60), None);
    assert_eq!(d.list(10).len(), 1);
    assert!(d.lift("cert:abc"));
    assert!(!d.lift("cert:abc"));
    assert_eq!(d.quarantined(&s, 10), None);
}

#[test]
fn memory_stays_within_max_tracked() {
    let d = Detector::new();
    let mut cfg = on();
    cfg.max_tracked = 64;
    for i in 0..10_000 {
        let c = format!("c{i}");
        d.observe(&cfg, &refused(Subject::Client(&c), "authz.scope", "/x", 5));
    }
    let held: usize = d.shards.iter().map(|s| s.lock().unwrap().len()).sum();
    assert!(held <= 64, "{held}");
    assert!(d.stats.evicted.load(Ordering::Relaxed) > 0);
    let mut q = on();
    q.max_quarantined = 2;
    assert!(d.quarantine(&q, "a", Kind::Probing, 0).is_some());
    assert!(d.quarantine(&q, "b", Kind::Probing, 0).is_some());
    assert!(d.quarantine(&q, "c", Kind::Probing, 0).is_none());
    // Expired ones make room.
    assert!(d.quarantine(&q, "c", Kind::Probing, 10_000).is_some());
}

#[test]
fn config_is_validated_field_by_field() {
    let yaml = "enumeration: {threshold: 0, window: 0s, action: ban}\nwebhook: {url: 'ftp://x'}\nquarantine_ttl: 200h\n";
    let f: FileDetection = serde_saphyr::from_str(yaml).unwrap();
    let mut errors = Vec::new();
    let mut p = portcullis_base::problems::Problems::new(Path::new("c.yaml"), &mut errors);
    let _ = config::validate(&mut p, Some(&f));
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "detection.quarantine_ttl",
            "detection.enumeration.threshold",
            "detection.enumeration.window",
            "detection.enumeration.action",
            "detection.webhook.url",
        ]
    );
    let mut errors = Vec::new();
    let mut p = portcullis_base::problems::Problems::new(Path::new("c.yaml"), &mut errors);
    let c = config::validate(&mut p, Some(&FileDetection::default()));
    assert!(errors.is_empty());
    assert!(c.enabled);
    assert_eq!(c.detector(Kind::Enumeration).threshold, 20);
    let mut p = portcullis_base::problems::Problems::new(Path::new("c.yaml"), &mut errors);
    assert!(!config::validate(&mut p, None).enabled);
}

#[test]
fn the_fleet_set_is_the_truth_for_what_it_has_shown() {
    let d = Detector::new();
    let cfg = on();
    d.quarantine(&cfg, "cert:lifted", Kind::Probing, 0);
    d.quarantine(&cfg, "cert:unshared", Kind::Probing, 0);
    let shown = |subject: &str| Quarantine {
        subject: subject.into(),
        detector: Kind::Probing,
        since: 0,
        until: 1000,
    };
    let other = Quarantine::decode("cert:other", &shown("x").encode()).unwrap();
    d.merge_fleet(&cfg, vec![shown("cert:lifted"), other.clone()], 10);
    let held =
        |d: &Detector| -> Vec<String> { d.list(10).into_iter().map(|q| q.subject).collect() };
    assert_eq!(held(&d), ["cert:lifted", "cert:other", "cert:unshared"]);
    // `lifted` leaves the set (lifted elsewhere): it goes; `unshared` was never in it: it stays
    // until it ends; `gone` has ended.
    let gone = Quarantine::decode("cert:gone", "5 1 replay").unwrap();
    d.merge_fleet(&cfg, vec![other, gone], 10);
    assert_eq!(held(&d), ["cert:other", "cert:unshared"]);
    assert_eq!(Quarantine::decode("s", "1 2 nonsense"), None);
    assert_eq!(Quarantine::decode("s", "1 2 replay extra"), None);
    assert_eq!(Quarantine::decode("", "1 2 replay"), None);
}

#[test]
fn volume_fires_on_a_spike_against_the_clients_own_baseline_after_the_warm_up() {
    let d = Detector::new();
    let mut cfg = on();
    cfg.volume = Some(VolumeConfig {
        multiple: 3.0,
        min_requests: 5,
        warmup: 3,
        bucket: Duration::from_secs(1),
        alpha: 0.5,
        action: Action::Alert,
    });
    let at = |subject, now| Event {
        subject,
        reason: None,
        route: Some("accounts"),
        class: None,
        scopes: &[],
        path: "/accounts",
        now,
    };
    // During the warm-up even a burst does not fire.
    for _ in 0..100 {
        assert_eq!(
            d.observe_volume(&cfg, &at(Subject::Client("burst"), 0)),
            None
        );
    }
    let s = Subject::Client("steady");
    for now in 0..4 {
        for _ in 0..2 {
            assert_eq!(d.observe_volume(&cfg, &at(s, now)), None);
        }
    }
    // Baseline 1.875 after four buckets of 2: the limit is max(3 × 1.875, 5) = 5.625.
    let mut fired = Vec::new();
    for i in 1..=10 {
        if let Some(a) = d.observe_volume(&cfg, &at(s, 4)) {
            fired.push((i, a));
        }
    }
    assert_eq!(fired.len(), 1, "{fired:?}");
    let (i, a) = &fired[0];
    assert_eq!(*i, 6);
    assert_eq!(
        (a.detector, a.count, a.threshold, a.window_s),
        (Kind::Volume, 6, 6, 1)
    );
    assert_eq!(a.subject, "client:steady");
    // Another route of the same client has its own baseline (none yet: warming up).
    let mut other = at(s, 4);
    other.route = Some("payments");
    assert_eq!(d.observe_volume(&cfg, &other), None);
}

#[test]
fn the_routes_of_one_class_share_one_volume_baseline() {
    let d = Detector::new();
    let mut cfg = on();
    cfg.volume = Some(VolumeConfig {
        multiple: 3.0,
        min_requests: 5,
        warmup: 3,
        bucket: Duration::from_secs(1),
        alpha: 0.5,
        action: Action::Alert,
    });
    let at = |route, class, now| Event {
        subject: Subject::Client("c"),
        reason: None,
        route: Some(route),
        class,
        scopes: &[],
        path: "/",
        now,
    };
    // A baseline of 2 a second on the class, one request on each of two of its routes.
    for now in 0..4 {
        for route in ["balances", "transactions"] {
            assert_eq!(d.observe_volume(&cfg, &at(route, Some("reads"), now)), None);
        }
    }
    // A spike spread over the class's routes is one rate: it fires at the 6th request.
    let routes = ["balances", "transactions", "beneficiaries"];
    let fired: Vec<usize> = (1..=9)
        .filter(|i| {
            d.observe_volume(&cfg, &at(routes[i % 3], Some("reads"), 4))
                .is_some()
        })
        .collect();
    assert_eq!(fired, [6]);
    // Without the class, each route would still be warming up or below its own limit.
    let d = Detector::new();
    for now in 0..4 {
        for route in ["balances", "transactions"] {
            assert_eq!(d.observe_volume(&cfg, &at(route, None, now)), None);
        }
    }
    assert!((1..=9).all(|i| d
        .observe_volume(&cfg, &at(routes[i % 3], None, 4))
        .is_none()));
}

#[test]
fn first_use_fires_once_per_new_route_after_the_learning_period() {
    let d = Detector::new();
    let mut cfg = on();
    cfg.first_use = Some(FirstUseConfig {
        learning: Duration::from_secs(3600),
        ..FirstUseConfig::default()
    });
    let at = |route, now, reason| Event {
        subject: Subject::Cert("t"),
        reason,
        route: Some(route),
        class: None,
        scopes: &[],
        path: "/",
        now,
    };
    assert_eq!(d.observe_first_use(&cfg, &at("accounts", 0, None)), None);
    // Learning: new routes are learned, not alerted on.
    assert_eq!(d.observe_first_use(&cfg, &at("balances", 3599, None)), None);
    assert_eq!(d.observe_first_use(&cfg, &at("accounts", 4000, None)), None);
    // A refusal is not a use.
    let refused = at("payments", 4000, Some("authz.scope"));
    assert_eq!(d.observe_first_use(&cfg, &refused), None);
    let a = d
        .observe_first_use(&cfg, &at("payments", 4000, None))
        .unwrap();
    assert_eq!(
        (a.detector, a.route.as_deref()),
        (Kind::FirstUse, Some("payments"))
    );
    assert_eq!(d.observe_first_use(&cfg, &at("payments", 4001, None)), None);
    // Addresses are not watched.
    let mut peer = at("x", 9999, None);
    peer.subject = Subject::Peer([10, 0, 0, 1].into());
    assert_eq!(d.observe_first_use(&cfg, &peer), None);
}

#[test]
fn first_use_of_a_scope_is_named_and_outside_hours_only_fires_outside_them() {
    let d = Detector::new();
    let mut cfg = on();
    cfg.first_use = Some(FirstUseConfig {
        learning: Duration::from_secs(3600),
        ..FirstUseConfig::default()
    });
    let accounts = ["accounts".to_string()];
    let payments = ["payments".to_string()];
    fn at<'a>(route: &'a str, scopes: &'a [String], now: i64) -> Event<'a> {
        Event {
            subject: Subject::Client("c"),
            reason: None,
            route: Some(route),
            class: None,
            scopes,
            path: "/",
            now,
        }
    }
    assert_eq!(d.observe_first_use(&cfg, &at("list", &accounts, 0)), None);
    // A new route with a known scope: the route is named, no scope.
    let a = d
        .observe_first_use(&cfg, &at("balances", &accounts, 4000))
        .unwrap();
    assert_eq!((a.reason.as_str(), a.scope.as_deref()), ("first_use", None));
    // A new route with a new scope: one alert naming both.
    let a = d
        .observe_first_use(&cfg, &at("pay", &payments, 4000))
        .unwrap();
    assert_eq!(
        (a.reason.as_str(), a.route.as_deref(), a.scope.as_deref()),
        ("first_use", Some("pay"), Some("payments"))
    );
    // A known route that now asks for a scope the client never used (the policy changed).
    let both = ["accounts".to_string(), "extra".to_string()];
    let a = d.observe_first_use(&cfg, &at("list", &both, 4000)).unwrap();
    assert_eq!(
        (a.reason.as_str(), a.scope.as_deref()),
        ("first_use.scope", Some("extra"))
    );
    // Scopes not watched: only routes.
    let d = Detector::new();
    let mut no_scopes = cfg.clone();
    no_scopes.first_use = Some(FirstUseConfig {
        learning: Duration::from_secs(3600),
        scopes: false,
        ..FirstUseConfig::default()
    });
    assert_eq!(
        d.observe_first_use(&no_scopes, &at("list", &accounts, 0)),
        None
    );
    assert_eq!(
        d.observe_first_use(&no_scopes, &at("list", &both, 4000)),
        None
    );

    // Outside 07:00-19:00 UTC only: a first use at noon is learned silently, one at 22:00
    // fires.
    let d = Detector::new();
    let mut hours = cfg.clone();
    hours.first_use = Some(FirstUseConfig {
        learning: Duration::from_secs(3600),
        hours: Hours::parse("07:00-19:00"),
        ..FirstUseConfig::default()
    });
    let day = 20_000 * 86_400;
    assert_eq!(d.observe_first_use(&hours, &at("list", &[], day)), None);
    let noon = day + 12 * 3600;
    assert_eq!(d.observe_first_use(&hours, &at("a", &[], noon)), None);
    let night = day + 22 * 3600;
    assert!(d.observe_first_use(&hours, &at("b", &[], night)).is_some());
    assert_eq!(
        d.observe_first_use(&hours, &at("a", &[], night)),
        None,
        "learned at noon"
    );
}

#[test]
fn hours_parse_and_wrap_midnight() {
    assert_eq!(
        Hours::parse("07:00-19:30"),
        Some(Hours {
            from: 420,
            to: 1170
        })
    );
    assert_eq!(
        Hours::parse("22:00-06:00").map(|h| h.contains(23 * 3600)),
        Some(true)
    );
    assert_eq!(
        Hours::parse("22:00-06:00").map(|h| h.contains(5 * 3600)),
        Some(true)
    );
    assert_eq!(
        Hours::parse("22:00-06:00").map(|h| h.contains(12 * 3600)),
        Some(false)
    );
    assert_eq!(
        Hours::parse("00:00-24:00").map(|h| h.contains(86_399)),
        Some(true)
    );
    for bad in [
        "7:00-19:00",
        "07:00-07:00",
        "25:00-01:00",
        "07:60-08:00",
        "0700-1900",
        "",
    ] {
        assert_eq!(Hours::parse(bad), None, "{bad}");
    }
}
