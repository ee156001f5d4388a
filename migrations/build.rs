// sqlx::migrate! embeds the SQL files at compile time; without this, adding a new
// migration file would not rebuild the crate and the file would silently be missing.
fn main() {
    println!("cargo:rerun-if-changed=sql");
}
