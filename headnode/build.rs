//! `sqlx::migrate!` embeds the migrations at compile time; cargo does not
//! know that, so a new or changed migration must rebuild the headnode.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
