//! When a schedule fires: pure functions of a cron expression, a time zone,
//! the stored next run and the time now (no clock, no I/O).
//!
//! Daylight saving time is the cron crate's (`croner` over `jiff` zones),
//! as crontab does it: a fixed time that falls in a spring-forward gap runs
//! at the first instant after the gap, and one that a fall-back repeats runs
//! once, at the first of the two instants; `*` minutes and hours run in
//! every real instant.
//!
//! A run is due when now has reached `next_run_at`. It fires once however
//! many times its cron matched since (a coordinator down for a day fires a
//! `0 * * * *` schedule once on return, not 24 times), and is late when it
//! fires more than [`GRACE_MS`] after the time it was due for. The next run
//! is the first match strictly after now.

use jiff::Timestamp;
use jiff::tz::TimeZone;

/// How long after its time a run still counts as on time. The leader looks
/// every half second; beyond a minute, something (no coordinator up, no
/// leader) held it back.
pub const GRACE_MS: i64 = 60_000;

/// A run to fire now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fire {
    /// The time it was due for (the stored next run).
    pub scheduled_for: i64,
    /// Fired more than [`GRACE_MS`] after `scheduled_for`.
    pub late: bool,
    /// The next run after this one.
    pub next_run_at: i64,
}

/// The first time after `after_ms` (strictly) that `cron` matches in `tz`,
/// in milliseconds since the epoch.
pub fn next_after(cron: &croner::Cron, tz: &TimeZone, after_ms: i64) -> Result<i64, String> {
    let at = Timestamp::from_millisecond(after_ms)
        .map_err(|e| format!("{after_ms} ms is not a time: {e}"))?
        .to_zoned(tz.clone());
    let next = cron
        .find_next_occurrence(&at, false)
        .map_err(|e| format!("no run after {at}: {e}"))?;
    Ok(next.timestamp().as_millisecond())
}

/// Whether a schedule whose next run is `next_run_at` fires at `now`, and
/// if so for which time, whether late, and when it runs next.
pub fn due(
    cron: &croner::Cron,
    tz: &TimeZone,
    next_run_at: i64,
    now: i64,
) -> Result<Option<Fire>, String> {
    if now < next_run_at {
        return Ok(None);
    }
    Ok(Some(Fire {
        scheduled_for: next_run_at,
        late: now - next_run_at > GRACE_MS,
        next_run_at: next_after(cron, tz, now.max(next_run_at))?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_common::appfile::CronSchedule;

    fn cron(text: &str) -> croner::Cron {
        text.parse::<CronSchedule>().expect("cron").cron()
    }

    fn paris() -> TimeZone {
        TimeZone::get("Europe/Paris").expect("Europe/Paris")
    }

    /// Milliseconds of an instant written with its offset.
    fn at(text: &str) -> i64 {
        text.parse::<Timestamp>()
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .as_millisecond()
    }

    fn show(ms: i64, tz: &TimeZone) -> String {
        Timestamp::from_millisecond(ms)
            .expect("ms")
            .to_zoned(tz.clone())
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string()
    }

    /// The runs of `cron` in `tz` after `from`, as local times with offsets.
    fn runs(cron_text: &str, tz: &TimeZone, from: &str, n: usize) -> Vec<String> {
        let c = cron(cron_text);
        let mut t = at(from);
        (0..n)
            .map(|_| {
                t = next_after(&c, tz, t).expect("next");
                show(t, tz)
            })
            .collect()
    }

    #[test]
    fn table() {
        let utc = TimeZone::UTC;
        let c = cron("0 2 * * *");
        let two = at("2026-03-10T02:00:00Z");
        // (what, next_run_at, now) -> (scheduled_for, late, next run)?
        type Case<'a> = (&'a str, i64, i64, Option<(i64, bool, &'a str)>);
        let cases: &[Case<'_>] = &[
            ("before its time: nothing", two, two - 1, None),
            (
                "at its time: fires, on time, next tomorrow",
                two,
                two,
                Some((two, false, "2026-03-11T02:00:00+00:00")),
            ),
            (
                "within the grace: on time",
                two,
                two + GRACE_MS,
                Some((two, false, "2026-03-11T02:00:00+00:00")),
            ),
            (
                "past the grace: late",
                two,
                two + GRACE_MS + 1,
                Some((two, true, "2026-03-11T02:00:00+00:00")),
            ),
            (
                "missed for three days: fires once, late, next after now",
                two,
                at("2026-03-13T09:00:00Z"),
                Some((two, true, "2026-03-14T02:00:00+00:00")),
            ),
        ];
        for (what, next, now, want) in cases {
            let got = due(&c, &utc, *next, *now).expect("due");
            let got = got.map(|f| (f.scheduled_for, f.late, show(f.next_run_at, &utc)));
            let want = want.map(|(s, l, n)| (s, l, n.to_string()));
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn a_missed_run_fires_once_not_n_times() {
        let utc = TimeZone::UTC;
        let c = cron("* * * * *");
        let next = at("2026-01-01T00:00:00Z");
        // A coordinator away for an hour: 60 matches missed.
        let now = next + 3_600_000 + 500;
        let fire = due(&c, &utc, next, now).expect("due").expect("fires");
        assert!(fire.late);
        assert_eq!(fire.next_run_at, at("2026-01-01T01:01:00Z"));
        // Once claimed (next run moved on), nothing more is due now.
        assert_eq!(due(&c, &utc, fire.next_run_at, now).expect("due"), None);
    }

    #[test]
    fn spring_forward_gap_in_paris() {
        // 29 March 2026: 02:00 CET jumps to 03:00 CEST; 02:30 never exists.
        assert_eq!(
            runs("30 2 * * *", &paris(), "2026-03-28T12:00:00Z", 3),
            [
                "2026-03-29T03:00:00+02:00",
                "2026-03-30T02:30:00+02:00",
                "2026-03-31T02:30:00+02:00"
            ],
            "a fixed time inside the gap runs once, at the first instant after it"
        );
        // Every-minute: nothing in the missing hour, no duplicate after it.
        assert_eq!(
            runs("* * * * *", &paris(), "2026-03-29T00:58:00Z", 3),
            [
                "2026-03-29T01:59:00+01:00",
                "2026-03-29T03:00:00+02:00",
                "2026-03-29T03:01:00+02:00"
            ]
        );
        // An hourly job: 01:00, then 03:00 (02:00 does not exist), then 04:00.
        assert_eq!(
            runs("0 * * * *", &paris(), "2026-03-28T23:30:00Z", 3),
            [
                "2026-03-29T01:00:00+01:00",
                "2026-03-29T03:00:00+02:00",
                "2026-03-29T04:00:00+02:00"
            ]
        );
    }

    #[test]
    fn fall_back_overlap_in_paris() {
        // 25 October 2026: 03:00 CEST goes back to 02:00 CET; 02:30 happens
        // twice. A daily job runs once, at the first.
        assert_eq!(
            runs("30 2 * * *", &paris(), "2026-10-24T12:00:00Z", 2),
            ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]
        );
        // Fired at the first 02:30, its next run is the next day, not the
        // second 02:30 an hour later.
        let c = cron("30 2 * * *");
        let first = at("2026-10-25T02:30:00+02:00");
        let fire = due(&c, &paris(), first, first + 1_000)
            .expect("due")
            .expect("fires");
        assert_eq!(
            show(fire.next_run_at, &paris()),
            "2026-10-26T02:30:00+01:00"
        );
    }

    #[test]
    fn runs_in_the_schedules_zone() {
        // 02:00 in Paris is 01:00 UTC in winter, 00:00 UTC in summer.
        let c = cron("0 2 * * *");
        assert_eq!(
            next_after(&c, &paris(), at("2026-01-15T12:00:00Z")),
            Ok(at("2026-01-16T01:00:00Z"))
        );
        assert_eq!(
            next_after(&c, &paris(), at("2026-07-15T12:00:00Z")),
            Ok(at("2026-07-16T00:00:00Z"))
        );
    }
}
