//! Rules for a new order. The gateway checks them to answer bad input at the edge;
//! the order-service checks them again because it must not trust its callers.

use crate::order::v1::OrderItem;

/// Longest accepted customer id and SKU, in bytes.
pub const MAX_ID_LEN: usize = 64;
/// Most line items in one order.
pub const MAX_ITEMS: usize = 100;
/// Largest quantity of one line item.
pub const MAX_QUANTITY: i64 = 1000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("customer_id must be 1 to {MAX_ID_LEN} characters of [A-Za-z0-9._-]")]
    CustomerId,
    #[error("items must not be empty")]
    NoItems,
    #[error("an order has at most {MAX_ITEMS} items")]
    TooManyItems,
    #[error("items[{0}].sku must be 1 to {MAX_ID_LEN} characters of [A-Za-z0-9._-]")]
    Sku(usize),
    #[error("items[{0}].quantity must be between 1 and {MAX_QUANTITY}")]
    Quantity(usize),
}

/// Checks a new order's customer id and items.
pub fn validate_new_order(customer_id: &str, items: &[OrderItem]) -> Result<(), ValidationError> {
    if !is_identifier(customer_id) {
        return Err(ValidationError::CustomerId);
    }
    if items.is_empty() {
        return Err(ValidationError::NoItems);
    }
    if items.len() > MAX_ITEMS {
        return Err(ValidationError::TooManyItems);
    }
    for (index, item) in items.iter().enumerate() {
        if !is_identifier(&item.sku) {
            return Err(ValidationError::Sku(index));
        }
        if !(1..=MAX_QUANTITY).contains(&item.quantity) {
            return Err(ValidationError::Quantity(index));
        }
    }
    Ok(())
}

fn is_identifier(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_ID_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(customer: &str, items: &[(&str, i64)]) -> Result<(), ValidationError> {
        let items: Vec<OrderItem> = items
            .iter()
            .map(|(sku, quantity)| OrderItem {
                sku: (*sku).to_owned(),
                quantity: *quantity,
            })
            .collect();
        validate_new_order(customer, &items)
    }

    #[test]
    fn accepts_a_normal_order() {
        assert_eq!(
            check("customer-1", &[("SKU-1", 1), ("SKU-2", 1000)]),
            Ok(())
        );
    }

    #[test]
    fn rejects_each_bad_field() {
        assert_eq!(check("", &[("A", 1)]), Err(ValidationError::CustomerId));
        assert_eq!(check("a b", &[("A", 1)]), Err(ValidationError::CustomerId));
        let long = "x".repeat(MAX_ID_LEN + 1);
        assert_eq!(check(&long, &[("A", 1)]), Err(ValidationError::CustomerId));
        assert_eq!(check("c", &[]), Err(ValidationError::NoItems));
        assert_eq!(
            check("c", &[("A", 1), ("", 1)]),
            Err(ValidationError::Sku(1))
        );
        assert_eq!(check("c", &[("A", 0)]), Err(ValidationError::Quantity(0)));
        assert_eq!(check("c", &[("A", -3)]), Err(ValidationError::Quantity(0)));
        assert_eq!(
            check("c", &[("A", MAX_QUANTITY + 1)]),
            Err(ValidationError::Quantity(0))
        );
        let many = vec![("A", 1); MAX_ITEMS + 1];
        assert_eq!(check("c", &many), Err(ValidationError::TooManyItems));
    }
}
