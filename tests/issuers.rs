//! External token issuers (SPEC 3): `[[auth.issuers]]` with `jwks_inline`, `jwks_file` or
//! `jwks_url` (cached, rate-limited refetch on unknown `kid`), optional `audience`, RS256/ES256/EdDSA
//! only, and refusal of everything that is not a valid token of a configured issuer.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{HttpResponse, web};
use common::*;
use dialog_events::auth::SigningKey;
use dialog_events::{App, Settings};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const DIALOGS: &str = "/api/v1/serviceowner/dialogs";
const ISSUER: &str = "https://issuer.test/";
const OTHER_ISSUER: &str = "https://other-issuer.test/";
const AUDIENCE: &str = "dialog-events";

/// A P-256 private key (PKCS#8) used only by these tests.
const EC_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQghCekwzbo27zLdI8o
LVZmUs8YAVMbeWwQ2RkznrPQfzyhRANCAATD4FCYJrQbD+x8DxGy7uEqAEWJ/DXo
TtP4q3yJ1jsyuQfUDPs7fR1zyGhWtcQ3W94n9aXelHyTj8OA1uOnaOwd
-----END PRIVATE KEY-----
";

/// A 2048-bit RSA private key (PKCS#1) used only by these tests.
const RSA_PEM: &str = "-----BEGIN RSA PRIVATE KEY-----
MIIEowIBAAKCAQEAstpRC/IDlEKxwbAjtOZfHkX6oloirF9C5M2rfqoNp9e7KRP3
k+x92oJTgmmpMAsoyPAWjpqn1CX0/0A0WSQ5fP/Tt8SCN/eyoESPnU/WnpwjKowH
PMWP9oAhp+6rTQMhmC5Mxez/gyGl87GDxYiCfaugiB7D3IeMmMRGdSCbOClDBT1g
T+L2NEHl1HTZiqtL75yT5JOzr4qH1IQiMgBmhE1B7M5KDnX0CpHqRmN8NZjiZoT/
HPBUtL7g7jVVbAvNOftOc1U4ow8yo6DMbUoOHIU0QnQEJ/RtOxsfYWuylGvItoXy
JivOPK66Cf112Oy9Cl8/389+KFlhYeLuuYbqvwIDAQABAoIBABe9wi9nP1Fhbw4q
bvr2755ppKUDeQHPnWYY5RBpy2lByk7gHyesJ2KnlSVFGFfPy2is8hmY7vlK1pRB
dhF1LQpqPTTyKWT7hOMgZr33mKIyULq3nshS41LR3GXZ2TReW4nDb56AYMSL5WcN
Y9QHVGcRLryS9OXjumaW+1FV9DTGkJGXh/XDVP7660w1OsWwTSOubIdcxxgKuwgS
jL5GDN5daB9BMqxeBJe5d6p0rNCmFPqol78ATP0CYNuidiQYN2/2wjhkuHnL++Rb
EC7rfARKCuWDzhZ13BhpTB8iMQBMgG1+wDFJYXDygt7g+CTIDtmI9W4PxEluDu30
AntUC0UCgYEA3Cv7yMyiAZ5KZ7BlHmtwSWMzKT638n+VzrurzqgITfWgzXktDumP
T83tO4MdPXXJOKqefd+jfhyW8UYhBt+VGFObRVlRB8LNM27I2NQGiKI9v0FLCBoV
YgipARpiqaKAEbESWk615ia3VDR2mFJ+TFB474cuBJH/iQasBRftWvsCgYEAz/UM
DEUyx1jsSZ/rNnAq0MIwDqaVx1A+FROtnlUyqohHpzVeHDbnlZrDgrpCfDZy9tri
iPYV4jk+QqtwdsnWfZJmRMZqgysEql+HWZQQoRn+CAFcMwBSWgnmB7lGvUYYt4HG
d/xf43TETZ5xuKzXpxM3V5HnkxC2gAfolHWqJA0CgYBEPCFpZvoilEMtBX8hQVzo
caUOeFCcCCyOiJ1Di9IfDywJ4i8zuvDeY8zNL+JlBNcbB83c5u2NjSC+n+Rmc+6K
PocVpAu34wijkwcOJA/uUpHeb0bouOS9oD94hwvi1OjqEr3EXTaEoKUapLPIm3Bn
CF2ipnt9kR3oArhXT8YQ9wKBgBH4+7GTyW+xH7q9N3bc+tZP8hdSDl/Lb5IiwT6N
3nMelBK/agLGO/2SApOpxVU233i2Mh3kJsAGcnsQlgeuKftwS6Zl/46WiTCwUOJN
CaLivDG07GL8BCID+P1x5cs146z4ak60YRUnYk/TAcEULw8hegb3dSwgpaUrCc7K
3ImBAoGBALvuhE4jRmODnrg/lPbxZDOr/7a4VgsZtME5hOm4x1g0dhevj+yEGO9b
enXymOEzl72pma7OUeCC2O9yIp+XNk0zpnFGvZPntSvLyIGFdT6ajp0MkDbfTeln
T+ylL/QWksKVxnD3Fj+wjFLeTgvOR0t/lUICTVLndnYsAA+vLUoq
-----END RSA PRIVATE KEY-----
";

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Maskinporten-style claims of ORG_A (owner of RESOURCE) as service owner.
fn owner_claims(iss: &str) -> Value {
    json!({
        "iss": iss,
        "iat": now(),
        "exp": now() + 600,
        "scope": SO,
        "consumer": {"authority": "iso6523-actorid-upis", "ID": format!("0192:{ORG_A}")},
    })
}

/// Claims of PERSON_1 as end user.
fn person_claims(iss: &str) -> Value {
    json!({
        "iss": iss,
        "iat": now(),
        "exp": now() + 600,
        "scope": EU,
        "pid": PERSON_1,
    })
}

fn jwks(keys: &[Value]) -> Value {
    json!({ "keys": keys })
}

/// One `[[auth.issuers]]` table; `source` is the `jwks_*` line.
fn issuer_toml(iss: &str, source: &str, audience: Option<&str>) -> String {
    let audience = audience
        .map(|a| format!("audience = \"{a}\"\n"))
        .unwrap_or_default();
    format!("[[auth.issuers]]\nissuer = \"{iss}\"\n{source}\n{audience}")
}

fn inline(keys: &[Value]) -> String {
    // A TOML literal string: JSON has no single quotes.
    format!("jwks_inline = '{}'", jwks(keys))
}

/// Status of a create of RESOURCE (owned by ORG_A) with `token`.
async fn create_status(node: &TestNode, token: &str) -> u16 {
    let r = node.post(DIALOGS, token, &dialog_body()).await;
    r.status.as_u16()
}

/// Asserts `token` is refused with 401 problem+json on a create.
async fn assert_refused(node: &TestNode, token: &str, why: &str) {
    let r = node.post(DIALOGS, token, &dialog_body()).await;
    assert_eq!(r.status.as_u16(), 401, "{why}: {}", r.body);
    r.assert_problem(401, None);
}

/// A JWKS endpoint on 127.0.0.1 that counts its requests and can change its keys.
struct JwksServer {
    url: String,
    hits: Arc<AtomicUsize>,
    keys: Arc<Mutex<Value>>,
    handle: actix_web::dev::ServerHandle,
}

impl JwksServer {
    async fn start(initial: Value) -> JwksServer {
        let hits = Arc::new(AtomicUsize::new(0));
        let keys = Arc::new(Mutex::new(initial));
        let state = web::Data::new((hits.clone(), keys.clone()));
        let server = actix_web::HttpServer::new(move || {
            actix_web::App::new().app_data(state.clone()).route(
                "/jwks.json",
                web::get().to(
                    |s: web::Data<(Arc<AtomicUsize>, Arc<Mutex<Value>>)>| async move {
                        s.0.fetch_add(1, Ordering::SeqCst);
                        let body = s.1.lock().map(|k| k.clone()).unwrap_or(Value::Null);
                        HttpResponse::Ok().json(body)
                    },
                ),
            )
        })
        .workers(1)
        .bind(("127.0.0.1", 0))
        .expect("bind the JWKS server");
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        JwksServer {
            url: format!("http://{addr}/jwks.json"),
            hits,
            keys,
            handle,
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn serve(&self, keys: Value) {
        *self.keys.lock().expect("keys lock") = keys;
    }
}

/// An ES256 or RS256 signer from a PEM, with its public JWK carrying `kid`.
fn jsonwebtoken_signer(alg: Algorithm, kid: &str) -> (EncodingKey, Value) {
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(EC_PEM.as_bytes()).expect("EC key"),
        Algorithm::RS256 => EncodingKey::from_rsa_pem(RSA_PEM.as_bytes()).expect("RSA key"),
        other => panic!("no test key for {other:?}"),
    };
    let mut jwk = Jwk::from_encoding_key(&key, alg).expect("public JWK");
    jwk.common.key_id = Some(kid.to_owned());
    (key, serde_json::to_value(&jwk).expect("JWK JSON"))
}

fn jsonwebtoken_sign(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, key).expect("sign")
}

#[actix_web::test]
async fn inline_jwks_issuer_tokens_are_accepted_with_both_consumer_forms_and_pid() {
    let key = SigningKey::generate();
    let node = start(&issuer_toml(ISSUER, &inline(&[key.public_jwk()]), None)).await;

    let token = key.sign_jwt(&owner_claims(ISSUER));
    let created = node.post(DIALOGS, &token, &dialog_body()).await;
    assert_eq!(created.status.as_u16(), 201, "{}", created.body);
    let id = created.body.as_str().expect("id").to_owned();

    let mut claims = owner_claims(ISSUER);
    claims["consumer"] = json!(org_urn(ORG_A));
    assert_eq!(create_status(&node, &key.sign_jwt(&claims)).await, 201);

    let person = key.sign_jwt(&person_claims(ISSUER));
    let read = node
        .get(&format!("/api/v1/enduser/dialogs/{id}"), &person)
        .await;
    assert_eq!(read.status.as_u16(), 200, "{}", read.body);
    assert_eq!(read.body["id"], id.as_str());

    // The party comes from the token: ORG_B's token from the same issuer may not create for ORG_A.
    let mut claims = owner_claims(ISSUER);
    claims["consumer"] = json!(org_urn(ORG_B));
    let r = node
        .post(DIALOGS, &key.sign_jwt(&claims), &dialog_body())
        .await;
    r.assert_problem(403, None);
}

#[actix_web::test]
async fn jwks_file_issuer_tokens_are_accepted() {
    let key = SigningKey::generate();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks(&[key.public_jwk()]).to_string()).expect("write JWKS");
    let source = format!("jwks_file = {:?}", path.display().to_string());
    let node = start(&issuer_toml(ISSUER, &source, None)).await;

    assert_eq!(
        create_status(&node, &key.sign_jwt(&owner_claims(ISSUER))).await,
        201
    );
    let stranger = SigningKey::generate();
    assert_refused(
        &node,
        &stranger.sign_jwt(&owner_claims(ISSUER)),
        "a key not in the file",
    )
    .await;
}

#[actix_web::test]
async fn jwks_url_is_fetched_once_cached_and_unknown_kids_cannot_force_refetches() {
    let key = SigningKey::generate();
    let jwks_server = JwksServer::start(jwks(&[key.public_jwk()])).await;
    let source = format!("jwks_url = \"{}\"", jwks_server.url);
    let node = start(&issuer_toml(ISSUER, &source, None)).await;

    let token = key.sign_jwt(&owner_claims(ISSUER));
    assert_eq!(create_status(&node, &token).await, 201);
    assert_eq!(jwks_server.hits(), 1, "the first token fetches the JWKS");
    assert_eq!(create_status(&node, &token).await, 201);
    assert_eq!(jwks_server.hits(), 1, "within the cache TTL: no refetch");

    for i in 0..6 {
        let unknown = SigningKey::generate();
        assert_refused(
            &node,
            &unknown.sign_jwt(&owner_claims(ISSUER)),
            &format!("unknown kid #{i}"),
        )
        .await;
    }
    let hits = jwks_server.hits();
    assert!(
        hits <= 2,
        "unknown kids refetch at most once per 10 s, got {hits} fetches"
    );
    assert_eq!(
        create_status(&node, &token).await,
        201,
        "known key still works"
    );
    jwks_server.handle.stop(false).await;
}

#[actix_web::test]
async fn a_rotated_jwks_url_key_is_picked_up_by_one_refetch_without_waiting_for_the_cache_ttl() {
    let old = SigningKey::generate();
    let new = SigningKey::generate();
    let jwks_server = JwksServer::start(jwks(&[old.public_jwk()])).await;
    let source = format!("jwks_url = \"{}\"", jwks_server.url);
    // The default cache TTL is 5 minutes; rotation must not wait for it.
    let node = start(&issuer_toml(ISSUER, &source, None)).await;
    assert_eq!(
        create_status(&node, &old.sign_jwt(&owner_claims(ISSUER))).await,
        201
    );
    assert_eq!(jwks_server.hits(), 1);

    jwks_server.serve(jwks(&[old.public_jwk(), new.public_jwk()]));
    let rotated = new.sign_jwt(&owner_claims(ISSUER));
    eventually(
        Duration::from_secs(15),
        "the new key to be accepted after a refetch",
        || async { create_status(&node, &rotated).await == 201 },
    )
    .await;
    assert_eq!(
        jwks_server.hits(),
        2,
        "hundreds of unknown-kid tokens while waiting cause exactly one refetch"
    );
    assert_eq!(
        create_status(&node, &old.sign_jwt(&owner_claims(ISSUER))).await,
        201,
        "the old key keeps working"
    );
    jwks_server.handle.stop(false).await;
}

#[actix_web::test]
async fn a_configured_audience_must_be_in_the_token() {
    let key = SigningKey::generate();
    let node = start(&issuer_toml(
        ISSUER,
        &inline(&[key.public_jwk()]),
        Some(AUDIENCE),
    ))
    .await;
    let with_aud = |aud: Option<Value>| {
        let mut claims = owner_claims(ISSUER);
        if let Some(aud) = aud {
            claims["aud"] = aud;
        }
        key.sign_jwt(&claims)
    };

    assert_eq!(
        create_status(&node, &with_aud(Some(json!(AUDIENCE)))).await,
        201
    );
    assert_eq!(
        create_status(&node, &with_aud(Some(json!(["other", AUDIENCE])))).await,
        201,
        "an aud array containing the audience"
    );
    assert_refused(
        &node,
        &with_aud(Some(json!("someone-else"))),
        "wrong audience",
    )
    .await;
    assert_refused(
        &node,
        &with_aud(Some(json!(["a", "b"]))),
        "audience not in array",
    )
    .await;
    assert_refused(&node, &with_aud(None), "no aud claim").await;
}

#[actix_web::test]
async fn tokens_of_unknown_issuers_foreign_keys_bad_times_and_other_algorithms_are_401() {
    let key = SigningKey::generate();
    let other = SigningKey::generate();
    let extra = format!(
        "{}\n{}",
        issuer_toml(ISSUER, &inline(&[key.public_jwk()]), None),
        issuer_toml(OTHER_ISSUER, &inline(&[other.public_jwk()]), None),
    );
    let node = start(&extra).await;
    // Both issuers work on their own.
    assert_eq!(
        create_status(&node, &key.sign_jwt(&owner_claims(ISSUER))).await,
        201
    );
    assert_eq!(
        create_status(&node, &other.sign_jwt(&owner_claims(OTHER_ISSUER))).await,
        201
    );

    assert_refused(
        &node,
        &key.sign_jwt(&owner_claims("https://not-configured.test/")),
        "issuer not configured",
    )
    .await;
    assert_refused(
        &node,
        &key.sign_jwt(&owner_claims("https://issuer.test")),
        "issuer differing by a trailing slash",
    )
    .await;
    let mut no_iss = owner_claims(ISSUER);
    no_iss.as_object_mut().expect("object").remove("iss");
    assert_refused(&node, &key.sign_jwt(&no_iss), "no iss").await;
    assert_refused(
        &node,
        &other.sign_jwt(&owner_claims(ISSUER)),
        "the other issuer's key does not verify this issuer's tokens",
    )
    .await;

    // Same kid as the configured key, different private key: the signature must fail.
    let mut impostor = SigningKey::generate();
    impostor.kid = key.kid.clone();
    assert_refused(
        &node,
        &impostor.sign_jwt(&owner_claims(ISSUER)),
        "signed with a different key under the trusted kid",
    )
    .await;

    // Tampered payload with the original signature.
    let token = key.sign_jwt(&owner_claims(ISSUER));
    let parts: Vec<&str> = token.split('.').collect();
    let mut forged_claims = owner_claims(ISSUER);
    forged_claims["scope"] = json!(format!("{SO} {ADMIN}"));
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        base64_url(forged_claims.to_string().as_bytes()),
        parts[2]
    );
    assert_refused(&node, &forged, "payload changed after signing").await;

    let mut expired = owner_claims(ISSUER);
    expired["iat"] = json!(now() - 7200);
    expired["exp"] = json!(now() - 3600);
    assert_refused(&node, &key.sign_jwt(&expired), "expired").await;
    let mut early = owner_claims(ISSUER);
    early["nbf"] = json!(now() + 3600);
    assert_refused(
        &node,
        &key.sign_jwt(&early),
        "not valid before an hour from now",
    )
    .await;
    let mut no_exp = owner_claims(ISSUER);
    no_exp.as_object_mut().expect("object").remove("exp");
    assert_refused(&node, &key.sign_jwt(&no_exp), "no exp").await;

    // HS256 with a shared secret, and the classic confusion of using the public key as the secret.
    for secret in [
        b"a shared secret".to_vec(),
        key.public_jwk()["x"]
            .as_str()
            .expect("x")
            .as_bytes()
            .to_vec(),
    ] {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(key.kid.clone());
        let hs = jsonwebtoken::encode(
            &header,
            &owner_claims(ISSUER),
            &EncodingKey::from_secret(&secret),
        )
        .expect("HS256");
        assert_refused(&node, &hs, "HS256 is not an accepted algorithm").await;
    }
    let none = format!(
        "{}.{}.",
        base64_url(
            json!({"alg": "none", "typ": "JWT", "kid": key.kid})
                .to_string()
                .as_bytes()
        ),
        base64_url(owner_claims(ISSUER).to_string().as_bytes())
    );
    assert_refused(&node, &none, "alg none").await;
    for garbage in ["", "abc", "a.b.c", "....", "eyJhbGciOiJFZERTQSJ9..."] {
        assert_refused(&node, garbage, &format!("garbage token {garbage:?}")).await;
    }
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[actix_web::test]
async fn es256_and_rs256_tokens_verify_against_their_jwks() {
    let (ec_key, ec_jwk) = jsonwebtoken_signer(Algorithm::ES256, "ec-1");
    let (rsa_key, rsa_jwk) = jsonwebtoken_signer(Algorithm::RS256, "rsa-1");
    let node = start(&issuer_toml(ISSUER, &inline(&[ec_jwk, rsa_jwk]), None)).await;

    let es = jsonwebtoken_sign(Algorithm::ES256, "ec-1", &ec_key, &owner_claims(ISSUER));
    assert_eq!(create_status(&node, &es).await, 201, "ES256");
    let rs = jsonwebtoken_sign(Algorithm::RS256, "rsa-1", &rsa_key, &owner_claims(ISSUER));
    assert_eq!(create_status(&node, &rs).await, 201, "RS256");

    // A token naming the RSA key's kid but signed with the EC key is refused.
    let crossed = jsonwebtoken_sign(Algorithm::ES256, "rsa-1", &ec_key, &owner_claims(ISSUER));
    assert_refused(&node, &crossed, "ES256 signature under an RSA kid").await;
    // RS384 is a valid RSA algorithm, but not one of RS256/ES256/EdDSA.
    let rs384 = jsonwebtoken_sign(Algorithm::RS384, "rsa-1", &rsa_key, &owner_claims(ISSUER));
    assert_refused(&node, &rs384, "RS384 is not accepted").await;
}

/// Builds a node from `extra` and returns the error of whichever step refuses it.
async fn refusal(extra: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = format!("data_dir = {:?}", dir.path().display().to_string());
    let settings = match Settings::from_toml_layers(&[&data_dir, &base_config(), extra]) {
        Ok(s) => s,
        Err(e) => return format!("{e:#}"),
    };
    match App::build(settings).await {
        Ok(app) => {
            app.handle().stop(false).await;
            panic!("the node must not start with {extra}");
        }
        Err(e) => format!("{e:#}"),
    }
}

#[actix_web::test]
async fn an_unusable_issuer_configuration_stops_start_up_naming_the_key() {
    let not_json = refusal(&issuer_toml(ISSUER, "jwks_inline = 'not json'", None)).await;
    assert!(
        not_json.contains("auth.issuers[0].jwks_inline"),
        "{not_json}"
    );
    let not_a_jwks = refusal(&issuer_toml(ISSUER, r#"jwks_inline = '{"foo": 1}'"#, None)).await;
    assert!(
        not_a_jwks.contains("auth.issuers[0].jwks_inline"),
        "{not_a_jwks}"
    );
    let key = SigningKey::generate();
    let second_bad = format!(
        "{}\n{}",
        issuer_toml(ISSUER, &inline(&[key.public_jwk()]), None),
        issuer_toml(OTHER_ISSUER, "jwks_inline = '[]'", None),
    );
    let second = refusal(&second_bad).await;
    assert!(second.contains("auth.issuers[1].jwks_inline"), "{second}");
    let two_sources = refusal(&issuer_toml(
        ISSUER,
        &format!(
            "{}\njwks_url = \"http://127.0.0.1:1/jwks.json\"",
            inline(&[])
        ),
        None,
    ))
    .await;
    assert!(two_sources.contains("auth.issuers[0]"), "{two_sources}");
    let no_source = refusal(&issuer_toml(ISSUER, "", None)).await;
    assert!(no_source.contains("auth.issuers[0]"), "{no_source}");
}
