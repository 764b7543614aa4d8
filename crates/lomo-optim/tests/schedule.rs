//! Learning-rate schedules.

use lomo_optim::{LrSchedule, ScheduleKind};

#[test]
fn constant_without_warmup_is_the_peak() {
    let s = LrSchedule::new(ScheduleKind::Constant, 0.1, 0.0, 10).unwrap();
    assert!((0..10).all(|t| s.lr(t) == 0.1));
}

#[test]
fn linear_warms_up_then_decays() {
    let s = LrSchedule::new(ScheduleKind::Linear, 1.0, 0.2, 10).unwrap();
    assert_eq!(s.warmup_steps, 2);
    let lrs: Vec<f64> = (0..10).map(|t| s.lr(t)).collect();
    assert_eq!(lrs[0], 0.5);
    assert_eq!(lrs[1], 1.0);
    assert_eq!(lrs[2], 1.0);
    assert!((lrs[6] - 0.5).abs() < 1e-12);
    assert!((lrs[9] - 0.125).abs() < 1e-12);
    assert!(lrs.windows(2).skip(2).all(|w| w[1] < w[0]));
}

#[test]
fn cosine_follows_half_a_cosine() {
    let s = LrSchedule::new(ScheduleKind::Cosine, 2.0, 0.0, 4).unwrap();
    let expected = [2.0, 1.0 + (std::f64::consts::FRAC_PI_4).cos(), 1.0, 1.0 - (std::f64::consts::FRAC_PI_4).cos()];
    for (t, e) in expected.iter().enumerate() {
        assert!((s.lr(t as u64) - e).abs() < 1e-12, "step {t}: {} vs {e}", s.lr(t as u64));
    }
}

#[test]
fn bad_schedules_name_their_field() {
    assert!(LrSchedule::new(ScheduleKind::Constant, -1.0, 0.0, 3).unwrap_err().to_string().starts_with("lr:"));
    assert!(LrSchedule::new(ScheduleKind::Constant, 1.0, 1.5, 3).unwrap_err().to_string().starts_with("warmup_ratio:"));
    assert!("sqrt".parse::<ScheduleKind>().unwrap_err().to_string().starts_with("schedule:"));
}
