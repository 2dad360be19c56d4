//! Reads of a SQLite database on the calling thread, for the reads that answer the most
//! requests ([`Reads`]: `GET /api/vms`).
//!
//! sqlx runs each SQLite connection on a thread of its own: every query is handed to that
//! thread and its rows handed back, a wake-up on each side, and each row is copied value by
//! value into the `Any` driver's row. For a user's list of ten VMs that costs more than the
//! query itself (BENCHMARKS.md, "Where the time of GET /api/vms goes"). [`DirectReads`]
//! keeps a few connections of its own to the same file (rusqlite, `query_only`); a read takes
//! one, runs its statement where it is called and puts the connection back.
//!
//! Only short reads belong here: a statement that walks an index for at most a page of rows
//! ([`crate::http::page::MAX_LIMIT`]) or for one user's VMs. It holds the async runtime's
//! thread for as long as it takes (well under a millisecond for ten rows, a few for a
//! thousand); the database is in write-ahead-log mode, whose readers never wait for its
//! writer. Everything else reads through the pool.
//!
//! Rows are decoded by [`FromColumns`], once for both paths: a type's `sqlx::FromRow` is its
//! `from_columns` over sqlx's row ([`from_any_row`]).

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sqlx::Row as _;
use sqlx::any::AnyRow;
use sqlx::error::BoxDynError;

use super::{Backend, Db, SqlBuilder, SqlValue};

/// Idle connections kept for the next reads; a burst beyond them opens more and closes them
/// afterwards.
const IDLE_KEPT: usize = 4;

/// Connections of one SQLite file that read on the caller's thread.
pub struct DirectReads {
    path: PathBuf,
    idle: Mutex<Vec<rusqlite::Connection>>,
}

impl DirectReads {
    /// Opens the database file at `path` (which must exist) for reading.
    pub fn open(path: &Path) -> rusqlite::Result<Self> {
        let reads = Self {
            path: path.to_owned(),
            idle: Mutex::default(),
        };
        let first = reads.connect()?;
        reads.put_back(first);
        Ok(reads)
    }

    fn connect(&self) -> rusqlite::Result<rusqlite::Connection> {
        use rusqlite::OpenFlags;
        // Read-write without create, then `query_only`: a read-only connection could not
        // set up the write-ahead log's shared memory if it were the first to open the file.
        let conn = rusqlite::Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch("PRAGMA query_only = ON; PRAGMA cache_size = -8192;")?;
        Ok(conn)
    }

    fn put_back(&self, conn: rusqlite::Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < IDLE_KEPT {
            idle.push(conn);
        }
    }

    /// Runs `sql` with `values` bound to `$1`, `$2`, … and decodes every row.
    pub fn fetch_all<T: FromColumns>(
        &self,
        sql: &str,
        values: &[SqlValue],
    ) -> Result<Vec<T>, sqlx::Error> {
        let taken = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let conn = match taken {
            Some(conn) => conn,
            None => self.connect().map_err(driver_error)?,
        };
        let rows = fetch_all_on(&conn, sql, values);
        self.put_back(conn);
        rows
    }
}

fn fetch_all_on<T: FromColumns>(
    conn: &rusqlite::Connection,
    sql: &str,
    values: &[SqlValue],
) -> Result<Vec<T>, sqlx::Error> {
    let mut statement = conn.prepare_cached(sql).map_err(driver_error)?;
    for (index, value) in values.iter().enumerate() {
        let name = format!("${}", index + 1);
        let position = statement
            .parameter_index(&name)
            .map_err(driver_error)?
            .ok_or_else(|| driver_error(format!("the statement has no parameter {name}")))?;
        statement
            .raw_bind_parameter(position, value)
            .map_err(driver_error)?;
    }
    // The column names, once per statement: rusqlite's own lookup by name compares every
    // column's name, ignoring case, for each value.
    let names: Vec<String> = statement
        .column_names()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let mut rows = statement.raw_query();
    let mut items = Vec::new();
    while let Some(row) = rows.next().map_err(driver_error)? {
        let row = DirectRow {
            row,
            names: &names,
            next: Cell::new(0),
        };
        items.push(T::from_columns(&row).map_err(sqlx::Error::Decode)?);
    }
    Ok(items)
}

/// A row of a [`DirectReads`] statement, its columns found by name.
struct DirectRow<'a> {
    row: &'a rusqlite::Row<'a>,
    names: &'a [String],
    /// Where the next column asked for most likely is: decoders read the columns in the
    /// order their statement selects them, so a lookup usually compares one name.
    next: Cell<usize>,
}

impl DirectRow<'_> {
    fn index_of(&self, column: &str) -> Result<usize, BoxDynError> {
        let hint = self.next.get();
        let index = if self.names.get(hint).is_some_and(|name| name == column) {
            hint
        } else {
            self.names
                .iter()
                .position(|name| name == column)
                .ok_or_else(|| format!("the statement has no column {column}"))?
        };
        self.next.set(index + 1);
        Ok(index)
    }
}

fn driver_error(err: impl Into<BoxDynError>) -> sqlx::Error {
    sqlx::Error::AnyDriverError(err.into())
}

impl rusqlite::ToSql for SqlValue {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(match self {
            SqlValue::Int(value) => (*value).into(),
            SqlValue::Text(value) => value.as_str().into(),
        })
    }
}

/// Where the most frequent reads go: [`DirectReads`] when the database is a SQLite file,
/// the pool otherwise (PostgreSQL, or a statement with a value only sqlx can bind).
#[derive(Clone)]
pub struct Reads {
    pool: Db,
    direct: Option<Arc<DirectReads>>,
}

impl Reads {
    /// The reads of `pool`: direct when it is a SQLite file.
    pub fn of(pool: &Db) -> anyhow::Result<Self> {
        use anyhow::Context;
        let direct = match sqlite_file(pool) {
            Some(path) => {
                Some(Arc::new(DirectReads::open(&path).with_context(|| {
                    format!("cannot open {} for reading", path.display())
                })?))
            }
            None => None,
        };
        Ok(Self {
            pool: pool.clone(),
            direct,
        })
    }

    /// Reads through the pool only.
    pub fn pooled(pool: &Db) -> Self {
        Self {
            pool: pool.clone(),
            direct: None,
        }
    }

    /// Whether reads run on the calling thread.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Every row of `query`.
    pub async fn fetch_all<T>(&self, query: SqlBuilder) -> Result<Vec<T>, sqlx::Error>
    where
        T: FromColumns + for<'r> sqlx::FromRow<'r, AnyRow> + Send + Unpin,
    {
        if let (Some(direct), Some(values)) = (&self.direct, query.values()) {
            return direct.fetch_all(query.sql(), values);
        }
        query.build_query_as()?.fetch_all(&self.pool).await
    }
}

/// The file of a SQLite pool; `None` for PostgreSQL or a database in memory.
fn sqlite_file(pool: &Db) -> Option<PathBuf> {
    if Backend::of(pool) != Backend::Sqlite {
        return None;
    }
    let url = pool.connect_options().database_url.clone();
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url.as_str()).ok()?;
    let path = options.get_filename();
    let in_memory = url.as_str().contains("mode=memory") || path.as_os_str() == ":memory:";
    (!in_memory && path.is_file()).then(|| path.to_owned())
}

/// A value decoded from a row's columns by name, the same way from sqlx's row and from a
/// [`DirectReads`] row.
pub trait FromColumns: Sized {
    fn from_columns(row: &impl Columns) -> Result<Self, BoxDynError>;
}

/// A row's columns, read by name.
pub trait Columns {
    /// Calls `read` with a text column's value, borrowed from the row (`None`: NULL): a value
    /// parsed into something else needs no `String` of its own.
    fn read_text<R>(
        &self,
        column: &str,
        read: impl FnOnce(Option<&str>) -> R,
    ) -> Result<R, BoxDynError>;
    fn int_opt(&self, column: &str) -> Result<Option<i64>, BoxDynError>;

    fn text_opt(&self, column: &str) -> Result<Option<String>, BoxDynError> {
        self.read_text(column, |text| text.map(str::to_owned))
    }

    fn text(&self, column: &str) -> Result<String, BoxDynError> {
        self.text_opt(column)?
            .ok_or_else(|| format!("column {column} is NULL").into())
    }

    fn int(&self, column: &str) -> Result<i64, BoxDynError> {
        self.int_opt(column)?
            .ok_or_else(|| format!("column {column} is NULL").into())
    }

    /// A text column read through `T`'s `FromStr`.
    fn parsed<T>(&self, column: &str) -> Result<T, BoxDynError>
    where
        T: FromStr,
        T::Err: Into<BoxDynError>,
    {
        self.parsed_opt(column)?
            .ok_or_else(|| format!("column {column} is NULL").into())
    }

    /// A text column that may be NULL, read through `T`'s `FromStr`.
    fn parsed_opt<T>(&self, column: &str) -> Result<Option<T>, BoxDynError>
    where
        T: FromStr,
        T::Err: Into<BoxDynError>,
    {
        self.read_text(column, |text| text.map(str::parse::<T>).transpose())?
            .map_err(|err| format!("column {column}: {}", err.into()).into())
    }

    /// An integer column that must fit `T`.
    fn int_as<T>(&self, column: &str) -> Result<T, BoxDynError>
    where
        T: TryFrom<i64>,
        T::Error: Into<BoxDynError>,
    {
        T::try_from(self.int(column)?).map_err(Into::into)
    }
}

impl Columns for AnyRow {
    fn read_text<R>(
        &self,
        column: &str,
        read: impl FnOnce(Option<&str>) -> R,
    ) -> Result<R, BoxDynError> {
        Ok(read(self.try_get(column)?))
    }

    fn int_opt(&self, column: &str) -> Result<Option<i64>, BoxDynError> {
        Ok(self.try_get(column)?)
    }
}

impl Columns for DirectRow<'_> {
    fn read_text<R>(
        &self,
        column: &str,
        read: impl FnOnce(Option<&str>) -> R,
    ) -> Result<R, BoxDynError> {
        let index = self.index_of(column)?;
        Ok(read(self.row.get_ref(index)?.as_str_or_null()?))
    }

    fn int_opt(&self, column: &str) -> Result<Option<i64>, BoxDynError> {
        Ok(self.row.get(self.index_of(column)?)?)
    }
}

/// `T::from_columns` over sqlx's row: the body of `T`'s `sqlx::FromRow`.
pub fn from_any_row<T: FromColumns>(row: &AnyRow) -> Result<T, sqlx::Error> {
    T::from_columns(row).map_err(sqlx::Error::Decode)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asks for its columns out of the statement's order, and one twice.
    #[derive(Debug, PartialEq)]
    struct OutOfOrder {
        c: Option<String>,
        a: String,
        b: i64,
        a_again: String,
    }

    impl FromColumns for OutOfOrder {
        fn from_columns(row: &impl Columns) -> Result<Self, BoxDynError> {
            Ok(OutOfOrder {
                c: row.text_opt("c")?,
                a: row.text("a")?,
                b: row.int("b")?,
                a_again: row.text("a")?,
            })
        }
    }

    /// Asks for a column the statement does not have.
    #[derive(Debug)]
    struct Missing;

    impl FromColumns for Missing {
        fn from_columns(row: &impl Columns) -> Result<Self, BoxDynError> {
            row.int("b")?;
            row.int("d")?;
            Ok(Missing)
        }
    }

    #[test]
    fn columns_are_found_by_name_in_any_order() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let sql = "SELECT 'x' AS a, 2 AS b, NULL AS c UNION ALL SELECT 'y', $1, 'z'";
        let rows: Vec<OutOfOrder> = fetch_all_on(&conn, sql, &[SqlValue::Int(3)]).unwrap();
        assert_eq!(
            rows,
            [
                OutOfOrder {
                    c: None,
                    a: "x".into(),
                    b: 2,
                    a_again: "x".into()
                },
                OutOfOrder {
                    c: Some("z".into()),
                    a: "y".into(),
                    b: 3,
                    a_again: "y".into()
                },
            ]
        );
        let err = fetch_all_on::<Missing>(&conn, sql, &[SqlValue::Int(3)]).unwrap_err();
        assert!(err.to_string().contains("no column d"), "{err}");
    }

    /// Parses its text columns: `n` as a number, `m` as a number that may be NULL.
    #[derive(Debug, PartialEq)]
    struct Parsed {
        n: u32,
        m: Option<u32>,
    }

    impl FromColumns for Parsed {
        fn from_columns(row: &impl Columns) -> Result<Self, BoxDynError> {
            Ok(Parsed {
                n: row.parsed("n")?,
                m: row.parsed_opt("m")?,
            })
        }
    }

    #[test]
    fn text_columns_are_parsed_from_the_row_and_bad_values_named() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let rows = |n: &str, m: &str| {
            let sql = format!("SELECT {n} AS n, {m} AS m");
            fetch_all_on::<Parsed>(&conn, &sql, &[]).map_err(|err| err.to_string())
        };
        assert_eq!(rows("'7'", "'8'"), Ok(vec![Parsed { n: 7, m: Some(8) }]));
        assert_eq!(rows("'7'", "NULL"), Ok(vec![Parsed { n: 7, m: None }]));
        let null = rows("NULL", "'8'").unwrap_err();
        assert!(null.contains("column n is NULL"), "{null}");
        let not_a_number = rows("'seven'", "NULL").unwrap_err();
        assert!(
            not_a_number.contains("column n: invalid digit"),
            "{not_a_number}"
        );
        let not_text = rows("7", "NULL").unwrap_err();
        assert!(not_text.contains("Invalid type"), "{not_text}");
    }

    #[test]
    fn the_bundled_sqlite_keeps_no_memory_statistics() {
        // `.cargo/config.toml` builds it so: the statistics take a process-wide mutex on
        // every allocation, which every reading thread contended for.
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let mut statement = conn.prepare("PRAGMA compile_options").unwrap();
        let options: Vec<String> = statement
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            options.iter().any(|option| option == "DEFAULT_MEMSTATUS=0"),
            "{options:?}"
        );
    }
}
