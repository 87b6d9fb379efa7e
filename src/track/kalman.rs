//! A constant-velocity Kalman filter on a box: centre x, centre y, width and height, each with its
//! velocity. With noise that is independent per coordinate (as in SORT and ByteTrack), the
//! 8-state filter falls apart into four 2-state filters, which is what this is.

/// One coordinate and its velocity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Axis {
    /// Position (pixels) and velocity (pixels per second).
    pub x: [f64; 2],
    /// Covariance of `x`.
    pub p: [[f64; 2]; 2],
}

impl Axis {
    fn new(position: f64, position_var: f64, velocity_var: f64) -> Self {
        Self {
            x: [position, 0.0],
            p: [[position_var, 0.0], [0.0, velocity_var]],
        }
    }

    /// Moves the state `dt_s` ahead; `accel_var` is the variance of the (white) acceleration.
    pub fn predict(&mut self, dt_s: f64, accel_var: f64) {
        let [[p00, p01], [p10, p11]] = self.p;
        self.x[0] += self.x[1] * dt_s;
        // P' = F P Fᵀ + Q, F = [[1, dt], [0, 1]], Q = q·[[dt⁴/4, dt³/2], [dt³/2, dt²]].
        let (dt2, dt3, dt4) = (dt_s * dt_s, dt_s.powi(3), dt_s.powi(4));
        self.p = [
            [
                p00 + dt_s * (p01 + p10) + dt2 * p11 + accel_var * dt4 / 4.0,
                p01 + dt_s * p11 + accel_var * dt3 / 2.0,
            ],
            [
                p10 + dt_s * p11 + accel_var * dt3 / 2.0,
                p11 + accel_var * dt2,
            ],
        ];
    }

    /// Takes a measurement `z` of the position with variance `r`.
    pub fn update(&mut self, z: f64, r: f64) {
        let [[p00, p01], [p10, p11]] = self.p;
        let s = p00 + r;
        if s <= 0.0 {
            return;
        }
        let (k0, k1) = (p00 / s, p10 / s);
        let innovation = z - self.x[0];
        self.x[0] += k0 * innovation;
        self.x[1] += k1 * innovation;
        self.p = [
            [(1.0 - k0) * p00, (1.0 - k0) * p01],
            [p10 - k1 * p00, p11 - k1 * p01],
        ];
    }
}

/// A box `[x1, y1, x2, y2]` tracked as centre and size with their velocities.
#[derive(Debug, Clone, PartialEq)]
pub struct BoxFilter {
    /// Centre x, centre y, width, height.
    axes: [Axis; 4],
}

/// Measurement noise: a detector's box wobbles by about this fraction of its height.
const MEASUREMENT_STD: f64 = 0.05;
/// Acceleration noise, in box heights per second²: how quickly a face changes speed.
const ACCELERATION_STD: f64 = 1.0;
/// Initial velocity uncertainty, box heights per second.
const INITIAL_VELOCITY_STD: f64 = 1.0;

impl BoxFilter {
    pub fn new(bbox: [f32; 4]) -> Self {
        let z = measurement(bbox);
        let h = z[3].max(1.0);
        let pos_var = (MEASUREMENT_STD * h).powi(2);
        let vel_var = (INITIAL_VELOCITY_STD * h).powi(2);
        Self {
            axes: z.map(|v| Axis::new(v, pos_var, vel_var)),
        }
    }

    /// The state `dt_s` seconds ahead.
    pub fn predict(&mut self, dt_s: f64) {
        let h = self.axes[3].x[0].max(1.0);
        let accel_var = (ACCELERATION_STD * h).powi(2);
        for axis in &mut self.axes {
            axis.predict(dt_s, accel_var);
        }
    }

    pub fn update(&mut self, bbox: [f32; 4]) {
        let z = measurement(bbox);
        let r = (MEASUREMENT_STD * z[3].max(1.0)).powi(2);
        for (axis, z) in self.axes.iter_mut().zip(z) {
            axis.update(z, r);
        }
    }

    /// The current box estimate (at least 1 px wide and tall).
    pub fn bbox(&self) -> [f32; 4] {
        let [cx, cy, w, h] = self.axes.map(|a| a.x[0]);
        let (w, h) = (w.max(1.0), h.max(1.0));
        [
            (cx - w / 2.0) as f32,
            (cy - h / 2.0) as f32,
            (cx + w / 2.0) as f32,
            (cy + h / 2.0) as f32,
        ]
    }

    /// How uncertain the centre is now (the larger of its two standard deviations), pixels: it
    /// grows while the box is predicted without measurements.
    pub fn centre_std_px(&self) -> f64 {
        self.axes[0].p[0][0]
            .max(self.axes[1].p[0][0])
            .max(0.0)
            .sqrt()
    }

    /// Velocity of the centre, pixels per second.
    pub fn velocity(&self) -> [f64; 2] {
        [self.axes[0].x[1], self.axes[1].x[1]]
    }
}

fn measurement(b: [f32; 4]) -> [f64; 4] {
    let [x1, y1, x2, y2] = b.map(f64::from);
    [(x1 + x2) / 2.0, (y1 + y2) / 2.0, x2 - x1, y2 - y1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prediction_grows_uncertainty_and_an_update_shrinks_it() {
        let mut a = Axis::new(0.0, 1.0, 1.0);
        a.predict(1.0, 0.0);
        // P = F P Fᵀ: [[2, 1], [1, 1]].
        assert_eq!(a.p, [[2.0, 1.0], [1.0, 1.0]]);
        a.update(2.0, 2.0);
        // Equal variances: half way to the measurement; the velocity learns half of it too.
        assert!((a.x[0] - 1.0).abs() < 1e-12 && (a.x[1] - 0.5).abs() < 1e-12);
        assert!(a.p[0][0] < 2.0);
    }

    #[test]
    fn a_box_moving_at_constant_speed_is_learnt_and_predicted() {
        let at = |t: f64| {
            let x = 100.0 + 50.0 * t;
            [x as f32, 40.0, x as f32 + 60.0, 100.0]
        };
        let mut f = BoxFilter::new(at(0.0));
        for i in 1..=25 {
            f.predict(0.04);
            f.update(at(i as f64 * 0.04));
        }
        let v = f.velocity();
        assert!((v[0] - 50.0).abs() < 2.0 && v[1].abs() < 2.0, "{v:?}");
        // Half a second without measurements: it keeps going.
        for _ in 0..12 {
            f.predict(0.04);
        }
        let predicted = f.bbox();
        let truth = at(1.0 + 0.48);
        assert!(
            (predicted[0] - truth[0]).abs() < 3.0,
            "{predicted:?} vs {truth:?}"
        );
        assert!((predicted[2] - predicted[0] - 60.0).abs() < 1.0);
    }
}
