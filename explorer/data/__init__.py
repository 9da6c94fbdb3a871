"""The data wing: design points and spaces, the store, the results table, accuracy sources."""
