//! Progress on stderr for work that takes more than a second: nothing is drawn before then, and
//! nothing at all when stderr is not a terminal (pipes, tests, CI logs).

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use gptc_graph::{Init, WeightSource};

const DELAY: Duration = Duration::from_secs(1);

/// A bar (for work of known size) or a spinner (for a call that says nothing until it returns).
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar over `total` bytes.
    pub fn bytes(message: &str, total: u64) -> Progress {
        let style = ProgressStyle::with_template(
            "{msg} [{bar:30}] {decimal_bytes}/{decimal_total_bytes} ({elapsed})",
        )
        .expect("the template is valid")
        .progress_chars("=> ");
        Progress::start(
            ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden()),
            style,
            message,
        )
    }

    /// A spinner with the time spent so far.
    pub fn spinner(message: &str) -> Progress {
        let style = ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .expect("the template is valid");
        let progress = Progress::start(ProgressBar::hidden(), style, message);
        progress.bar.enable_steady_tick(Duration::from_millis(120));
        progress
    }

    fn start(bar: ProgressBar, style: ProgressStyle, message: &str) -> Progress {
        bar.set_style(style);
        bar.set_message(message.to_string());
        let delayed = bar.clone();
        // Without a thread (the system may refuse one) the bar just stays hidden.
        let _ = std::thread::Builder::new().spawn(move || {
            std::thread::sleep(DELAY);
            if !delayed.is_finished() {
                delayed.set_draw_target(ProgressDrawTarget::stderr());
            }
        });
        Progress { bar }
    }

    pub fn advance(&self, n: u64) {
        self.bar.inc(n);
    }

    pub fn set_message(&self, message: &str) {
        self.bar.set_message(message.to_string());
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// A weight source that advances a bar by the bytes of each tensor it hands out.
pub struct Reporting<'a> {
    pub source: &'a mut dyn WeightSource,
    pub progress: &'a Progress,
    pub bytes_per_value: u64,
}

impl WeightSource for Reporting<'_> {
    fn tensor(&mut self, name: &str, shape: &[usize], init: Init) -> gptc_graph::Result<Vec<f32>> {
        let values = self.source.tensor(name, shape, init)?;
        self.progress.advance(values.len() as u64 * self.bytes_per_value);
        Ok(values)
    }
}
