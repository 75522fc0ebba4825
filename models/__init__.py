from models.tables import (  # noqa: F401
    Customer,
    CustomerMetric,
    FailedSnapshot,
    Order,
    OrderItem,
    Product,
    ProductVariant,
    Setting,
    SnapshotReject,
    SnapshotRun,
    SyncState,
    metadata,
)
