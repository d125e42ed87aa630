//! sea-orm entities for the tables created by the `migrations` crate.

pub mod device {
    //! A device: created by an operator with a secret, or registered on its
    //! first message under open registration.
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "device")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        #[sea_orm(unique)]
        pub name: String,
        pub first_seen: i64,
        /// The SHA-256 of the device's secret, in hex; `None` for devices
        /// that registered themselves.
        pub secret_hash: Option<String>,
        pub disabled: bool,
        /// A free-text name an operator gave the device.
        pub label: Option<String>,
        /// When an operator deleted the device but kept its readings; it
        /// is then gone from the fleet and the broker until added again.
        pub removed_at: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod series {
    //! One metric of one device.
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "series")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub device_id: i64,
        pub metric: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod reading {
    //! One stored reading of a series.
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "reading")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub series_id: i64,
        pub ts: i64,
        pub value: f64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
