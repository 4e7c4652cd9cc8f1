//! Prefixes: onboarding rules, errors with their details, tenancy, pagination.

use ipam_bindings::pb::api;
use tonic::Code;

use crate::common::*;

#[tokio::test]
async fn create_get_update_list_delete() {
    let server = TestServer::start().await;
    let account_id = account();
    let request = api::CreatePrefixRequest {
        account_id: account_id.clone(),
        cidr: "2001:DB8::/48".into(),
        asn: Some(209_242),
        description: "lab".into(),
        validate_only: false,
    };
    let created = server.prefixes().create_prefix(request).await.unwrap().into_inner();
    assert_eq!(created.cidr, "2001:db8::/48", "stored in canonical form");
    assert_eq!(created.asn, Some(209_242));
    assert_eq!(created.id.len(), 32);
    assert_eq!(created.created_at, created.modified_at);
    let created_at = created.created_at.unwrap();
    assert_eq!(created_at.nanos % 1000, 0, "microsecond precision");

    let get = api::GetPrefixRequest {
        account_id: account_id.clone(),
        prefix_id: created.id.clone(),
    };
    assert_eq!(
        server.prefixes().get_prefix(get.clone()).await.unwrap().into_inner(),
        created
    );

    let update = api::UpdatePrefixRequest {
        account_id: account_id.clone(),
        prefix_id: created.id.clone(),
        description: "production".into(),
        validate_only: false,
    };
    let updated = server.prefixes().update_prefix(update).await.unwrap().into_inner();
    assert_eq!(updated.description, "production");
    assert_eq!(updated.created_at, created.created_at);
    let micros = |t: Option<prost_types::Timestamp>| t.map(|t| t.seconds * 1_000_000 + i64::from(t.nanos / 1000));
    assert!(micros(updated.modified_at) >= micros(created.modified_at));

    let delete = api::DeletePrefixRequest {
        account_id: account_id.clone(),
        prefix_id: created.id.clone(),
        validate_only: false,
    };
    let deleted = server
        .prefixes()
        .delete_prefix(delete.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.id, created.id);
    let status = server.prefixes().get_prefix(get).await.unwrap_err();
    assert_error(&status, Code::NotFound, "PREFIX_NOT_FOUND", 1000, Some("prefix_id"));
    let status = server.prefixes().delete_prefix(delete).await.unwrap_err();
    assert_error(&status, Code::NotFound, "PREFIX_NOT_FOUND", 1000, Some("prefix_id"));
}

#[tokio::test]
async fn invalid_prefixes_are_refused_with_their_reason() {
    let server = TestServer::start().await;
    let account_id = account();
    let cases = [
        ("192.0.2.0", "INVALID_CIDR", 1001),
        ("not a cidr", "INVALID_CIDR", 1001),
        ("", "INVALID_CIDR", 1001),
        ("192.0.2.1/24", "CIDR_NOT_CANONICAL", 1007),
        ("192.0.2.0/25", "PREFIX_TOO_SMALL", 1008),
        ("2001:db8::/64", "PREFIX_TOO_SMALL", 1008),
    ];
    for (cidr, reason, code) in cases {
        let status = server.try_create_prefix(&account_id, cidr).await.unwrap_err();
        assert_error(&status, Code::InvalidArgument, reason, code, Some("cidr"));
    }
    let status = server
        .try_create_prefix("ABCDEF0123456789abcdef0123456789", "192.0.2.0/24")
        .await
        .unwrap_err();
    assert_error(
        &status,
        Code::InvalidArgument,
        "INVALID_ACCOUNT_ID",
        1004,
        Some("account_id"),
    );

    let long = api::CreatePrefixRequest {
        account_id: account_id.clone(),
        cidr: "192.0.2.0/24".into(),
        asn: None,
        description: "x".repeat(1001),
        validate_only: false,
    };
    let status = server.prefixes().create_prefix(long).await.unwrap_err();
    assert_error(
        &status,
        Code::InvalidArgument,
        "DESCRIPTION_TOO_LONG",
        1011,
        Some("description"),
    );

    // Every bad field is named at once; the first one's reason leads.
    let both = api::CreatePrefixRequest {
        account_id: "x".into(),
        cidr: "y".into(),
        asn: None,
        description: String::new(),
        validate_only: false,
    };
    let status = server.prefixes().create_prefix(both).await.unwrap_err();
    assert_error(&status, Code::InvalidArgument, "INVALID_ACCOUNT_ID", 1004, Some("cidr"));
    let fields = status.get_details_bad_request_fields();
    assert_eq!(fields, ["account_id", "cidr"]);
}

trait BadRequestFields {
    fn get_details_bad_request_fields(&self) -> Vec<String>;
}

impl BadRequestFields for tonic::Status {
    fn get_details_bad_request_fields(&self) -> Vec<String> {
        use tonic_types::StatusExt;
        self.get_details_bad_request()
            .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
            .unwrap_or_default()
    }
}

#[tokio::test]
async fn prefixes_may_not_overlap_across_accounts() {
    let server = TestServer::start().await;
    server.create_prefix(&account(), "198.51.100.0/24").await;
    for cidr in ["198.51.100.0/24", "198.51.0.0/16", "0.0.0.0/0"] {
        let status = server.try_create_prefix(&account(), cidr).await.unwrap_err();
        assert_error(&status, Code::AlreadyExists, "PREFIX_OVERLAPS", 1100, Some("cidr"));
    }
    server.create_prefix(&account(), "198.51.101.0/24").await;
}

#[tokio::test]
async fn another_accounts_prefix_is_not_found() {
    let server = TestServer::start().await;
    let prefix = server.create_prefix(&account(), "203.0.113.0/24").await;
    let stranger = account();
    let get = api::GetPrefixRequest {
        account_id: stranger.clone(),
        prefix_id: prefix.id.clone(),
    };
    let status = server.prefixes().get_prefix(get).await.unwrap_err();
    assert_error(&status, Code::NotFound, "PREFIX_NOT_FOUND", 1000, Some("prefix_id"));
    let update = api::UpdatePrefixRequest {
        account_id: stranger.clone(),
        prefix_id: prefix.id.clone(),
        description: "x".into(),
        validate_only: false,
    };
    assert_eq!(
        server.prefixes().update_prefix(update).await.unwrap_err().code(),
        Code::NotFound
    );
    let delete = api::DeletePrefixRequest {
        account_id: stranger.clone(),
        prefix_id: prefix.id.clone(),
        validate_only: false,
    };
    assert_eq!(
        server.prefixes().delete_prefix(delete).await.unwrap_err().code(),
        Code::NotFound
    );
    let list = api::ListPrefixesRequest {
        account_id: stranger,
        page_size: 0,
        page_token: String::new(),
    };
    assert!(
        server
            .prefixes()
            .list_prefixes(list)
            .await
            .unwrap()
            .into_inner()
            .prefixes
            .is_empty()
    );
}

#[tokio::test]
async fn lists_page_in_network_order() {
    let server = TestServer::start().await;
    let account_id = account();
    // 25 prefixes, created out of order and mixed families.
    let mut cidrs: Vec<String> = (0..20).map(|i| format!("10.{}.0.0/16", 19 - i)).collect();
    cidrs.extend((0..5).map(|i| format!("2001:db8:{:x}::/48", 4 - i)));
    cidrs.push("11.0.0.0/8".to_string());
    for cidr in &cidrs {
        server.create_prefix(&account_id, cidr).await;
    }
    server.create_prefix(&account(), "12.0.0.0/8").await; // another account's

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let request = api::ListPrefixesRequest {
            account_id: account_id.clone(),
            page_size: 7,
            page_token: token.clone(),
        };
        let page = server.prefixes().list_prefixes(request).await.unwrap().into_inner();
        assert!(page.prefixes.len() <= 7);
        seen.extend(page.prefixes.into_iter().map(|p| p.cidr));
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 4);
    let mut expected: Vec<String> = (0..20).map(|i| format!("10.{i}.0.0/16")).collect();
    expected.push("11.0.0.0/8".into());
    expected.push("2001:db8::/48".into());
    expected.extend((1..5).map(|i| format!("2001:db8:{i:x}::/48")));
    assert_eq!(seen, expected);

    let bad_token = api::ListPrefixesRequest {
        account_id: account_id.clone(),
        page_size: 0,
        page_token: "bogus".into(),
    };
    let status = server.prefixes().list_prefixes(bad_token).await.unwrap_err();
    assert_error(
        &status,
        Code::InvalidArgument,
        "INVALID_PAGE_TOKEN",
        1013,
        Some("page_token"),
    );
    let negative = api::ListPrefixesRequest {
        account_id,
        page_size: -1,
        page_token: String::new(),
    };
    let status = server.prefixes().list_prefixes(negative).await.unwrap_err();
    assert_error(
        &status,
        Code::InvalidArgument,
        "INVALID_PAGE_SIZE",
        1012,
        Some("page_size"),
    );
}

#[tokio::test]
async fn a_page_token_is_bound_to_its_list() {
    let server = TestServer::start().await;
    let (first, second) = (account(), account());
    for i in 0..3 {
        server.create_prefix(&first, &format!("172.16.{i}.0/24")).await;
    }
    let request = api::ListPrefixesRequest {
        account_id: first,
        page_size: 1,
        page_token: String::new(),
    };
    let token = server
        .prefixes()
        .list_prefixes(request)
        .await
        .unwrap()
        .into_inner()
        .next_page_token;
    assert!(!token.is_empty());
    let replayed = api::ListPrefixesRequest {
        account_id: second,
        page_size: 1,
        page_token: token,
    };
    let status = server.prefixes().list_prefixes(replayed).await.unwrap_err();
    assert_error(
        &status,
        Code::InvalidArgument,
        "INVALID_PAGE_TOKEN",
        1013,
        Some("page_token"),
    );
}

#[tokio::test]
async fn services_catalog_is_fixed() {
    let server = TestServer::start().await;
    let request = api::ListServicesRequest { account_id: account() };
    let services = server
        .services()
        .list_services(request)
        .await
        .unwrap()
        .into_inner()
        .services;
    let pairs: Vec<(String, String)> = services.into_iter().map(|s| (s.id, s.name)).collect();
    assert_eq!(
        pairs,
        [
            (MAGIC_TRANSIT.to_string(), "Magic Transit".to_string()),
            (CDN.to_string(), "CDN".to_string()),
            (SPECTRUM.to_string(), "Spectrum".to_string())
        ]
    );
    let status = server
        .services()
        .list_services(api::ListServicesRequest {
            account_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_error(
        &status,
        Code::InvalidArgument,
        "INVALID_ACCOUNT_ID",
        1004,
        Some("account_id"),
    );
}

/// CreatePrefixRequest with `cidr` as raw bytes, to send what a typed client cannot.
#[derive(Clone, PartialEq, prost::Message)]
struct RawCreatePrefixRequest {
    #[prost(string, tag = "1")]
    account_id: String,
    #[prost(bytes = "vec", tag = "2")]
    cidr: Vec<u8>,
}

#[tokio::test]
async fn undecodable_requests_are_invalid_argument_naming_the_field() {
    let server = TestServer::start().await;
    let mut grpc = tonic::client::Grpc::new(server.channel.clone());
    grpc.ready().await.unwrap();
    let request = RawCreatePrefixRequest {
        account_id: account(),
        cidr: vec![0xff, 0xfe, b'/', b'2'],
    };
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/addressing.v1.Prefixes/CreatePrefix");
    let codec = tonic_prost::ProstCodec::<RawCreatePrefixRequest, api::Prefix>::default();
    let status = grpc.unary(tonic::Request::new(request), path, codec).await.unwrap_err();
    assert_error(&status, Code::InvalidArgument, "MALFORMED_REQUEST", 1019, Some("cidr"));
}
