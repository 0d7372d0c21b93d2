//! Dialog tokens: EdDSA JWS in every single-dialog response, verifiable against the JWKS endpoint
//! by an independent JWT library, with Dialogporten's claims.

mod common;

use common::*;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

async fn jwks(node: &TestNode) -> JwkSet {
    let r = node
        .send("GET", "/api/v1/.well-known/jwks.json", None, &[], None)
        .await;
    assert_eq!(r.status.as_u16(), 200);
    serde_json::from_value(r.body).expect("a JWK set")
}

fn verify(token: &str, set: &JwkSet, issuer: &str) -> Value {
    let header = jsonwebtoken::decode_header(token).expect("header");
    assert_eq!(header.alg, Algorithm::EdDSA);
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    let kid = header.kid.expect("kid");
    let jwk = set.find(&kid).expect("token key is published");
    let key = DecodingKey::from_jwk(jwk).expect("decoding key");
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_issuer(&[issuer]);
    validation.validate_aud = false;
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .expect("token verifies")
        .claims
}

#[actix_web::test]
async fn jwks_publishes_two_ed25519_keys_and_metadata_names_the_issuer() {
    let node = start("").await;
    let set = jwks(&node).await;
    assert_eq!(set.keys.len(), 2, "primary and next");
    let r = node
        .send("GET", "/api/v1/.well-known/jwks.json", None, &[], None)
        .await;
    for k in r.body["keys"].as_array().expect("keys") {
        assert_eq!(k["kty"], "OKP");
        assert_eq!(k["crv"], "Ed25519");
        assert_eq!(k["alg"], "EdDSA");
    }
    assert_ne!(r.body["keys"][0]["kid"], r.body["keys"][1]["kid"]);
    let meta = node
        .send(
            "GET",
            "/api/v1/.well-known/oauth-authorization-server",
            None,
            &[],
            None,
        )
        .await;
    assert_eq!(meta.body["issuer"], format!("{}/api/v1", node.base));
    assert_eq!(
        meta.body["jwks_uri"],
        format!("{}/api/v1/.well-known/jwks.json", node.base)
    );
}

#[actix_web::test]
async fn end_user_details_carry_a_dialog_token_that_verifies_with_the_right_claims() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let r = node
        .get(
            &format!("/api/v1/enduser/dialogs/{id}"),
            &node.tokens.person_2,
        )
        .await;
    assert_eq!(r.status.as_u16(), 200);
    let token = r.body["dialogToken"].as_str().expect("dialogToken");
    let claims = verify(token, &jwks(&node).await, &format!("{}/api/v1", node.base));
    assert_eq!(claims["i"], id.as_str());
    assert_eq!(claims["p"], person_urn(PERSON_1));
    assert_eq!(claims["s"], RESOURCE);
    assert_eq!(
        claims["c"],
        person_urn(PERSON_2),
        "the authenticated party is the caller"
    );
    assert_eq!(claims["a"], "read");
    assert!(claims["jti"].is_string());
    assert!(claims["l"].is_number());
    let (iat, nbf, exp) = (
        claims["iat"].as_i64(),
        claims["nbf"].as_i64(),
        claims["exp"].as_i64(),
    );
    assert_eq!(exp.expect("exp") - iat.expect("iat"), 600, "lifetime 600 s");
    assert!(nbf.expect("nbf") <= iat.expect("iat"));
}

#[actix_web::test]
async fn service_owner_details_carry_a_dialog_token_too() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let r = node
        .get(
            &format!("/api/v1/serviceowner/dialogs/{id}"),
            &node.tokens.owner_a,
        )
        .await;
    let token = r.body["dialogToken"].as_str().expect("dialogToken");
    let claims = verify(token, &jwks(&node).await, &format!("{}/api/v1", node.base));
    assert_eq!(claims["i"], id.as_str());
    assert_eq!(claims["c"], org_urn(ORG_A));
}

#[actix_web::test]
async fn the_same_keys_survive_a_restart_on_the_same_data_dir() {
    let dir = tempfile::tempdir().expect("dir");
    let toml = format!(
        "data_dir = {:?}\n[http]\nbind = \"127.0.0.1:0\"",
        dir.path().display().to_string()
    );
    let first = dialog_events::auth::KeyStore::load_or_create(dir.path()).expect("keys");
    let settings = dialog_events::Settings::from_toml(&toml).expect("settings");
    let app = dialog_events::App::build(settings).await.expect("node");
    let base = app.base_url().to_owned();
    let handle = app.handle();
    actix_web::rt::spawn(app.run());
    let body = awc::Client::new()
        .get(format!("{base}/api/v1/.well-known/jwks.json"))
        .send()
        .await
        .expect("jwks")
        .json::<Value>()
        .await
        .expect("json");
    assert_eq!(body["keys"][0]["kid"], first.dialog_primary.kid.as_str());
    assert_eq!(body["keys"][1]["kid"], first.dialog_next.kid.as_str());
    handle.stop(true).await;
}
