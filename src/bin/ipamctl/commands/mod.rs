//! One module per command group; this one holds what they share: paging and the lines that
//! report a deletion or the next page.

pub mod bindings;
pub mod lookup;
pub mod prefixes;
pub mod rollout;
pub mod routes;
pub mod services;
pub mod watch;

use crate::output::Format;

/// Fetches pages until the last one, or just one page when the caller chose the page
/// (`follow` false). Returns the items and the token of the page after them.
pub async fn collect_pages<T, Page>(
    follow: bool,
    first_token: String,
    mut fetch: impl FnMut(String) -> Page,
) -> Result<(Vec<T>, String), String>
where
    Page: std::future::Future<Output = Result<(Vec<T>, String), String>>,
{
    let mut token = first_token;
    let mut all = Vec::new();
    loop {
        let (items, next_token) = fetch(token).await?;
        all.extend(items);
        token = next_token;
        if !follow || token.is_empty() {
            return Ok((all, token));
        }
    }
}

pub fn print_deleted(id: &str, format: Format) {
    if format == Format::Json {
        println!("{}", serde_json::json!({"deleted": id}))
    } else {
        println!("deleted {id}")
    }
}

pub fn print_next_token(token: &str, followed: bool, format: Format) {
    if !followed && !token.is_empty() {
        if format == Format::Json {
            println!("{}", serde_json::json!({"next_page_token": token}));
        } else {
            println!("next page: --page-token {token}");
        }
    }
}
