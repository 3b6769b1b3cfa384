//! Accuracy of the `local` sentiment analyser on the committed labelled call-centre sentences.

use providers::{SentimentLabel, sentiment};

fn load(path: &str) -> Vec<(SentimentLabel, String)> {
    let text = std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let (label, sentence) = line.split_once('\t').expect("label<TAB>text");
            (SentimentLabel::parse(label).expect("known label"), sentence.to_owned())
        })
        .collect()
}

fn accuracy(path: &str) -> (f64, usize) {
    let rows = load(path);
    let mut correct = 0;
    for (label, sentence) in &rows {
        let got = sentiment::analyze(sentence);
        if got.label == *label {
            correct += 1;
        } else {
            println!(
                "MISS want {:<8} got {:<8} {:+.2} {:?} | {sentence}",
                label.as_str(),
                got.label.as_str(),
                got.score,
                got.keywords
            );
        }
    }
    let acc = correct as f64 / rows.len() as f64;
    println!("{path}: {correct}/{} = {:.1} %", rows.len(), acc * 100.0);
    (acc, rows.len())
}

#[test]
fn labelled_set_reaches_85_percent() {
    let (acc, n) = accuracy("data/sentiment-labelled.tsv");
    assert!(n >= 150, "the labelled set must hold at least 150 sentences, has {n}");
    assert!(acc >= 0.85, "accuracy {:.1} % below 85 %", acc * 100.0);
}

#[test]
fn separate_holdout_set_generalises() {
    // Written at the same time as the labelled set and never used to tune the lexicon.
    let (acc, n) = accuracy("data/sentiment-holdout.tsv");
    assert!(n >= 50);
    assert!(acc >= 0.8, "hold-out accuracy {:.1} % below 80 %", acc * 100.0);
}

#[test]
fn every_class_is_represented() {
    let rows = load("data/sentiment-labelled.tsv");
    for label in [SentimentLabel::Positive, SentimentLabel::Neutral, SentimentLabel::Negative] {
        let n = rows.iter().filter(|(l, _)| *l == label).count();
        assert!(n >= 40, "{} has only {n} sentences", label.as_str());
    }
}
