//! Class names. A weights file may carry its model's names (safetensors metadata, written by
//! `udit train` from its dataset); 1000-class models without them get ImageNet's, which ship
//! with the project (`assets/imagenet-classes.tsv`: WordNet id and lemmas, in the label order
//! of ADM, DiT and torchvision). `--class` takes names or indices.

use std::collections::HashMap;

use anyhow::{Result, bail};

/// Safetensors metadata key: a JSON array of the class names in label order.
pub const METADATA_KEY: &str = "udit_classes";

const IMAGENET_TSV: &str = include_str!("../assets/imagenet-classes.tsv");

/// Names of a model's classes, in label order; empty when the model has none.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClassNames(Vec<String>);

impl ClassNames {
    pub fn new(names: Vec<String>) -> Self {
        Self(names)
    }

    /// ImageNet-1k: the lemmas of each synset ("tench, Tinca tinca").
    pub fn imagenet() -> Self {
        Self(IMAGENET_TSV.lines().filter_map(|l| l.split_once('\t')).map(|(_, name)| name.to_string()).collect())
    }

    /// The ImageNet names of WordNet ids (ImageNet-layout folder names such as `n01440764`),
    /// when every id is one of ImageNet-1k's.
    pub fn of_imagenet_wnids(wnids: &[String]) -> Option<Self> {
        let table: HashMap<&str, &str> = IMAGENET_TSV.lines().filter_map(|l| l.split_once('\t')).collect();
        wnids.iter().map(|w| table.get(w.as_str()).map(|n| n.to_string())).collect::<Option<_>>().map(Self)
    }

    /// The names stored in a weights file's metadata (none when it has none).
    pub fn stored(metadata: &HashMap<String, String>) -> Result<Self> {
        match metadata.get(METADATA_KEY) {
            Some(text) => serde_json::from_str(text)
                .map(Self)
                .map_err(|e| anyhow::anyhow!("the class names stored with the weights are not a JSON list ({e})")),
            None => Ok(Self::default()),
        }
    }

    /// The names stored in a weights file's metadata, else ImageNet's for a 1000-class model,
    /// else none. Stored names of the wrong count are an error.
    pub fn for_model(metadata: &HashMap<String, String>, num_classes: usize) -> Result<Self> {
        let stored = Self::stored(metadata)?;
        if !stored.is_empty() && stored.0.len() != num_classes {
            bail!("the weights carry {} class names for a {num_classes}-class model", stored.0.len());
        }
        Ok(if stored.is_empty() && num_classes == 1000 { Self::imagenet() } else { stored })
    }

    /// The metadata entry that stores these names (none when there are none).
    pub fn metadata(&self) -> Option<(String, String)> {
        (!self.0.is_empty())
            .then(|| (METADATA_KEY.to_string(), serde_json::to_string(&self.0).expect("strings serialize")))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn names(&self) -> &[String] {
        &self.0
    }

    /// The first lemma of class `class` ("tench" of "tench, Tinca tinca"), if named.
    pub fn short(&self, class: usize) -> Option<&str> {
        self.0.get(class).map(|n| n.split(',').next().unwrap_or(n).trim())
    }

    /// A class given by index or by name: the whole name or one of its comma-separated
    /// lemmas, case and `-`/`_`/space insensitive ("sneaker", "Ankle boot", "golden_retriever").
    pub fn parse(&self, text: &str, num_classes: usize) -> Result<usize> {
        let text = text.trim();
        if let Ok(i) = text.parse::<usize>() {
            if i >= num_classes {
                bail!("class {i} does not exist: the model has classes 0..{}", num_classes - 1);
            }
            return Ok(i);
        }
        let key = |s: &str| -> String {
            s.trim().chars().filter(|c| !matches!(c, ' ' | '-' | '_')).flat_map(char::to_lowercase).collect()
        };
        let wanted = key(text);
        let hits: Vec<usize> = (0..self.0.len())
            .filter(|&i| key(&self.0[i]) == wanted || self.0[i].split(',').any(|lemma| key(lemma) == wanted))
            .collect();
        match hits.as_slice() {
            [one] => Ok(*one),
            [] if self.0.is_empty() => bail!("{text:?} is not a class index (this model has no class names)"),
            [] => bail!("no class is called {text:?} (`udit info` lists the classes)"),
            many => bail!("{text:?} names several classes: {many:?}; give the index"),
        }
    }
}
