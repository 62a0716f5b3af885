//! Keyset cursors of the paginated lists (`GET /api/games`, `GET /api/tasks`): the
//! position of a page's last row in its sort order, handed to the client as an opaque
//! `nextCursor`, and refused when this server did not issue it for that sort.

use super::StoreError;
use super::game_query::QuerySink;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// A page's last row: its sort, its value in that sort (text or integer), its id.
#[derive(Serialize, Deserialize)]
struct Cursor {
    s: String,
    v: serde_json::Value,
    id: i64,
}

/// The value a keyset position holds: the sort column's, then the row's id.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Position {
    Text(String, i64),
    Int(i64, i64),
}

/// The cursor of the row at `position` in the sort named `sort`.
pub(super) fn encode(sort: &str, position: Position) -> String {
    let (v, id) = match position {
        Position::Text(text, id) => (text.into(), id),
        Position::Int(value, id) => (value.into(), id),
    };
    let cursor = Cursor {
        s: sort.into(),
        v,
        id,
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&cursor).expect("cursor serializes"))
}

/// The position `text` holds, if it is a cursor of the sort named `sort`, whose values
/// are text (`text_values`) or integers.
pub(super) fn decode(sort: &str, text_values: bool, text: &str) -> Result<Position, StoreError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| StoreError::InvalidCursor)?;
    let cursor: Cursor = serde_json::from_slice(&bytes).map_err(|_| StoreError::InvalidCursor)?;
    if cursor.s != sort {
        return Err(StoreError::InvalidCursor);
    }
    match cursor.v {
        serde_json::Value::String(value) if text_values => Ok(Position::Text(value, cursor.id)),
        value if !text_values => value
            .as_i64()
            .map(|value| Position::Int(value, cursor.id))
            .ok_or(StoreError::InvalidCursor),
        _ => Err(StoreError::InvalidCursor),
    }
}

/// ` AND (column, g.id) < (…)` (`>` ascending): the rows after `position`, in the
/// order `column`, then `g.id`, both descending or both ascending.
pub(super) fn push_after<Q: QuerySink>(
    sql: &mut Q,
    column: &str,
    descending: bool,
    position: Position,
) {
    let comparison = if descending { "<" } else { ">" };
    sql.push(format_args!(" AND ({column}, g.id) {comparison} ("));
    let id = match position {
        Position::Text(value, id) => {
            sql.push_text(value);
            id
        }
        Position::Int(value, id) => {
            sql.push_int(value);
            id
        }
    };
    sql.push(", ").push_int(id).push(")");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_only_for_its_own_sort_and_kind_of_value() {
        let title = encode("title", Position::Text("Zelda".into(), 7));
        assert_eq!(
            decode("title", true, &title).unwrap(),
            Position::Text("Zelda".into(), 7)
        );
        assert!(decode("-title", true, &title).is_err());
        assert!(decode("title", false, &title).is_err());
        let year = encode("releaseYear", Position::Int(1986, 3));
        assert_eq!(
            decode("releaseYear", false, &year).unwrap(),
            Position::Int(1986, 3)
        );
        for wrong in ["", "not-a-cursor", "e30"] {
            assert!(decode("title", true, wrong).is_err(), "{wrong:?}");
        }
    }
}
