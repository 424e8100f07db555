//! One provider's answers kept for their `cacheDuration`, keyed as the kubelet keys them (the
//! image, its registry or one global entry); bounded, the expired and then the oldest go first.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::credentials::Credential;

/// Entries one provider may keep; beyond it the expired, then the soonest to expire, are dropped.
pub(super) const MAX_ENTRIES: usize = 256;

/// What a plugin's response is cached under (`cacheKeyType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CacheKeyType {
    /// This image only (the repository the kubelet looks up, `registry.io/team/app`).
    Image,
    /// Every image of the image's registry (`registry.io:5000`).
    Registry,
    /// Every image.
    Global,
}

impl CacheKeyType {
    /// The response's `cacheKeyType` value, if it is one the kubelet knows.
    pub(super) fn parse(text: &str) -> Option<Self> {
        match text {
            "Image" => Some(CacheKeyType::Image),
            "Registry" => Some(CacheKeyType::Registry),
            "Global" => Some(CacheKeyType::Global),
            _ => None,
        }
    }
}

/// The kubelet's `parseRegistry`: everything before the first `/` of the looked-up image.
fn registry_of(image: &str) -> &str {
    image.split('/').next().unwrap_or(image)
}

/// The cache key for `image` under `kind`; the three kinds never collide.
fn key(kind: CacheKeyType, image: &str) -> String {
    match kind {
        CacheKeyType::Image => format!("image {image}"),
        CacheKeyType::Registry => format!("registry {}", registry_of(image)),
        CacheKeyType::Global => "global".to_string(),
    }
}

/// A provider's cached answers.
#[derive(Debug, Default)]
pub(super) struct Cache {
    entries: HashMap<String, Entry>,
}

#[derive(Debug)]
struct Entry {
    expires: Instant,
    credentials: Vec<Credential>,
}

impl Cache {
    /// A live answer for `image`: by image first, then by registry, then the global one (the
    /// kubelet's order).
    pub(super) fn get(&mut self, image: &str, now: Instant) -> Option<Vec<Credential>> {
        for kind in [
            CacheKeyType::Image,
            CacheKeyType::Registry,
            CacheKeyType::Global,
        ] {
            let key = key(kind, image);
            match self.entries.get(&key) {
                Some(entry) if entry.expires > now => return Some(entry.credentials.clone()),
                Some(_) => {
                    self.entries.remove(&key);
                }
                None => {}
            }
        }
        None
    }

    /// Keeps `credentials` for `image` under `kind` for `ttl`; a zero `ttl` keeps nothing.
    pub(super) fn put(
        &mut self,
        kind: CacheKeyType,
        image: &str,
        credentials: Vec<Credential>,
        ttl: Duration,
        now: Instant,
    ) {
        if ttl.is_zero() {
            return;
        }
        // Beyond what the clock can hold: as long as it can say (else not kept).
        let Some(expires) = now
            .checked_add(ttl)
            .or_else(|| now.checked_add(Duration::from_secs(u32::MAX.into())))
        else {
            return;
        };
        let key = key(kind, image);
        if !self.entries.contains_key(&key) && self.entries.len() >= MAX_ENTRIES {
            self.entries.retain(|_, entry| entry.expires > now);
            if self.entries.len() >= MAX_ENTRIES
                && let Some(oldest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, entry)| entry.expires)
                    .map(|(key, _)| key.clone())
            {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(
            key,
            Entry {
                expires,
                credentials,
            },
        );
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::Secret;

    fn credential(user: &str) -> Vec<Credential> {
        vec![Credential {
            username: user.into(),
            password: Secret::new("pw"),
            key: "registry.io".into(),
        }]
    }

    #[test]
    fn answers_by_cache_key_type_until_expiry() {
        struct Case {
            input: (CacheKeyType, &'static str),
            want: Option<&'static str>,
        }
        let stored = "registry.io:5000/team/app";
        let cases = [
            Case {
                input: (CacheKeyType::Image, stored),
                want: Some("u"),
            },
            Case {
                input: (CacheKeyType::Image, "registry.io:5000/team/other"),
                want: None,
            },
            Case {
                input: (CacheKeyType::Registry, "registry.io:5000/other"),
                want: Some("u"),
            },
            Case {
                input: (CacheKeyType::Registry, "registry.io/team/app"),
                want: None,
            },
            Case {
                input: (CacheKeyType::Global, "elsewhere.io/app"),
                want: Some("u"),
            },
        ];
        let now = Instant::now();
        for case in cases {
            let (kind, asked) = case.input;
            let mut cache = Cache::default();
            cache.put(kind, stored, credential("u"), Duration::from_secs(60), now);
            let got = cache.get(asked, now).map(|c| c[0].username.clone());
            assert_eq!(got.as_deref(), case.want, "{kind:?} {asked}");
            let later = now + Duration::from_secs(61);
            assert!(
                cache.get(asked, later).is_none(),
                "expired: {kind:?} {asked}"
            );
        }
    }

    #[test]
    fn zero_duration_is_not_cached_and_size_is_bounded() {
        let now = Instant::now();
        let mut cache = Cache::default();
        cache.put(
            CacheKeyType::Global,
            "r.io/a",
            credential("u"),
            Duration::ZERO,
            now,
        );
        assert!(cache.get("r.io/a", now).is_none());
        cache.put(
            CacheKeyType::Image,
            "r.io/long",
            credential("l"),
            Duration::MAX,
            now,
        );
        assert!(
            cache.get("r.io/long", now).is_some(),
            "a duration past the clock's end"
        );

        cache.put(
            CacheKeyType::Image,
            "r.io/expired",
            credential("x"),
            Duration::from_secs(1),
            now,
        );
        for i in 0..MAX_ENTRIES + 10 {
            let at = now + Duration::from_secs(2);
            let ttl = Duration::from_secs(100 + i as u64);
            cache.put(
                CacheKeyType::Image,
                &format!("r.io/{i}"),
                credential("u"),
                ttl,
                at,
            );
        }
        assert_eq!(cache.len(), MAX_ENTRIES);
        let at = now + Duration::from_secs(2);
        assert!(
            cache.get("r.io/0", at).is_none(),
            "the soonest to expire went first"
        );
        assert!(
            cache
                .get(&format!("r.io/{}", MAX_ENTRIES + 9), at)
                .is_some()
        );
    }
}
