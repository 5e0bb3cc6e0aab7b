//! Metric numerics against closed forms and hand-computed values.

use udit::eval::metrics::{Stats, frechet_distance, inception_score, precision_recall};

fn stats(mu: &[f64], sigma: &[f64]) -> Stats {
    Stats { mu: mu.to_vec(), sigma: sigma.to_vec() }
}

fn close(a: f64, b: f64, tol: f64) {
    assert!((a - b).abs() <= tol, "{a} vs {b}");
}

#[test]
fn frechet_of_identical_statistics_is_the_mean_term() {
    let s = stats(&[1.0, 2.0], &[2.0, 0.5, 0.5, 1.0]);
    close(frechet_distance(&s, &s).unwrap(), 0.0, 1e-9);
    let shifted = stats(&[4.0, -2.0], &s.sigma);
    close(frechet_distance(&s, &shifted).unwrap(), 9.0 + 16.0, 1e-9);
}

#[test]
fn frechet_of_diagonal_covariances_is_elementwise() {
    let (a, b): ([f64; 3], [f64; 3]) = ([1.0, 4.0, 9.0], [4.0, 1.0, 0.25]);
    let diag = |v: &[f64; 3]| (0..9).map(|k| if k % 4 == 0 { v[k / 4] } else { 0.0 }).collect::<Vec<_>>();
    let expected: f64 = 1.0 + a.iter().zip(&b).map(|(x, y)| x + y - 2.0 * (x * y).sqrt()).sum::<f64>();
    let d = frechet_distance(&stats(&[1.0, 0.0, 0.0], &diag(&a)), &stats(&[0.0, 0.0, 0.0], &diag(&b))).unwrap();
    close(d, expected, 1e-9);
}

#[test]
fn frechet_of_non_commuting_2x2_matches_the_closed_form() {
    // M = S1 S2 = [[2,3],[1,6]]: tr 8, det 9, so tr sqrt(M) = sqrt(tr + 2 sqrt(det)) = sqrt(14).
    let (s1, s2) = (stats(&[0.0, 0.0], &[2.0, 1.0, 1.0, 2.0]), stats(&[0.0, 0.0], &[1.0, 0.0, 0.0, 3.0]));
    close(frechet_distance(&s1, &s2).unwrap(), 4.0 + 4.0 - 2.0 * 14f64.sqrt(), 1e-9);
    close(frechet_distance(&s2, &s1).unwrap(), 4.0 + 4.0 - 2.0 * 14f64.sqrt(), 1e-9);
}

#[test]
fn frechet_handles_singular_covariances() {
    // Rank-1 S1 = [[1,1],[1,1]] against I: S1 S2 has eigenvalues 2 and 0.
    let (s1, s2) = (stats(&[0.0, 0.0], &[1.0, 1.0, 1.0, 1.0]), stats(&[0.0, 0.0], &[1.0, 0.0, 0.0, 1.0]));
    close(frechet_distance(&s1, &s2).unwrap(), 2.0 + 2.0 - 2.0 * 2f64.sqrt(), 1e-9);
    // Both singular with orthogonal supports: the product is 0.
    let s3 = stats(&[0.0, 0.0], &[1.0, -1.0, -1.0, 1.0]);
    close(frechet_distance(&s1, &s3).unwrap(), 4.0, 1e-9);
    assert!(frechet_distance(&s1, &stats(&[0.0], &[1.0])).is_err());
}

#[test]
fn statistics_are_mean_and_unbiased_covariance() {
    let x = [1.0f32, 2.0, 3.0, 6.0, 5.0, 10.0];
    let s = Stats::from_features(&x, 2).unwrap();
    close(s.mu[0], 3.0, 1e-12);
    close(s.mu[1], 6.0, 1e-12);
    // x: 1,3,5 (var 4); y: 2,6,10 (var 16); cov 8.
    for (got, want) in s.sigma.iter().zip([4.0, 8.0, 8.0, 16.0]) {
        close(*got, want, 1e-12);
    }
    assert!(Stats::from_features(&x[..2], 2).is_err());
}

#[test]
fn inception_score_extremes() {
    // Uniform predictions: KL 0, score 1.
    close(inception_score(&vec![0.0; 4 * 10], 10, 5000), 1.0, 1e-12);
    // Confident and all different: score = number of classes used.
    let mut logits = vec![0f32; 4 * 10];
    for i in 0..4 {
        logits[i * 10 + i] = 100.0;
    }
    close(inception_score(&logits, 10, 5000), 4.0, 1e-6);
    // Two splits of two different confident classes each: 2 per split.
    close(inception_score(&logits, 10, 2), 2.0, 1e-6);
}

#[test]
fn precision_and_recall_on_point_clouds() {
    // Reference: 20 points on a line, spacing 1; the 3rd neighbour is 2 away (radius^2 4).
    let reference: Vec<f32> = (0..20).flat_map(|i| [i as f32, 0.0]).collect();
    let (p, r) = precision_recall(&reference, &reference, 2, 3).unwrap();
    close(p, 1.0, 0.0);
    close(r, 1.0, 0.0);
    let far: Vec<f32> = (0..20).flat_map(|i| [i as f32, 100.0]).collect();
    let (p, r) = precision_recall(&reference, &far, 2, 3).unwrap();
    close(p, 0.0, 0.0);
    close(r, 0.0, 0.0);
    // Half the samples on the reference line, half far away: precision 1/2. The sample
    // manifold's balls around the 10 on-line samples (x = 0, 2, ..., 18; 3rd neighbour
    // 6 away) cover every reference point: recall 1.
    let half: Vec<f32> = (0..20).flat_map(|i| if i % 2 == 0 { [i as f32, 0.0] } else { [i as f32, 100.0] }).collect();
    let (p, r) = precision_recall(&reference, &half, 2, 3).unwrap();
    close(p, 0.5, 0.0);
    close(r, 1.0, 0.0);
    assert!(precision_recall(&reference, &reference[..6], 2, 3).is_err(), "3 samples are too few for k = 3");
}
