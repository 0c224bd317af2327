//! Every value of an error type, derived from its definition: the list of reason codes (and the
//! documentation table made from it) comes from the types, so a new error variant cannot be
//! missing from it.
//!
//! [`variants!`](crate::variants!) wraps an enum definition and implements [`Variants`] for it:
//! a unit variant is one value; a variant with one or two fields has a value for every value of
//! its fields' types (which implement [`Variants`] themselves). Types that carry data rather
//! than a choice ([`String`], [`Vec`]) have one representative value.

/// Every value of a type (a representative one for data).
pub trait Variants: Sized {
    fn variants() -> Vec<Self>;
}

impl Variants for String {
    fn variants() -> Vec<Self> {
        vec![String::new()]
    }
}

impl<T> Variants for Vec<T> {
    fn variants() -> Vec<Self> {
        vec![Vec::new()]
    }
}

impl<T: Variants> Variants for Option<T> {
    fn variants() -> Vec<Self> {
        let mut all = vec![None];
        all.extend(T::variants().into_iter().map(Some));
        all
    }
}

impl Variants for bool {
    fn variants() -> Vec<Self> {
        vec![false, true]
    }
}

/// Defines an enum and implements [`Variants`] for it (see the module doc).
#[macro_export]
macro_rules! variants {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $(
                $(#[$vmeta:meta])*
                $variant:ident
                $( ( $first:ty $(, $second:ty)? ) )?
                $( { $field:ident : $fty:ty } )?
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $(
                $(#[$vmeta])*
                $variant $( ( $first $(, $second)? ) )? $( { $field : $fty } )?
            ),*
        }

        impl $crate::variants::Variants for $name {
            // One push per variant, however many there are.
            #[allow(clippy::vec_init_then_push)]
            fn variants() -> Vec<Self> {
                let mut all = Vec::new();
                $(
                    $crate::variants!(
                        @push all, $name, $variant
                        $( ( $first $(, $second)? ) )? $( { $field : $fty } )?
                    );
                )*
                all
            }
        }
    };
    (@push $all:ident, $name:ident, $variant:ident) => {
        $all.push($name::$variant);
    };
    (@push $all:ident, $name:ident, $variant:ident ( $first:ty )) => {
        $all.extend(
            <$first as $crate::variants::Variants>::variants()
                .into_iter()
                .map($name::$variant),
        );
    };
    (@push $all:ident, $name:ident, $variant:ident ( $first:ty, $second:ty )) => {
        for a in <$first as $crate::variants::Variants>::variants() {
            for b in <$second as $crate::variants::Variants>::variants() {
                $all.push($name::$variant(a.clone(), b));
            }
        }
    };
    (@push $all:ident, $name:ident, $variant:ident { $field:ident : $fty:ty }) => {
        $all.extend(
            <$fty as $crate::variants::Variants>::variants()
                .into_iter()
                .map(|$field| $name::$variant { $field }),
        );
    };
}

#[cfg(test)]
mod tests {
    use super::Variants;

    crate::variants! {
        #[derive(Clone, Debug, PartialEq)]
        enum Inner {
            A,
            B,
        }
    }

    crate::variants! {
        #[derive(Clone, Debug, PartialEq)]
        enum Outer {
            /// A unit variant.
            Plain,
            Nested(Inner),
            Pair(Inner, bool),
            Named { text: String },
        }
    }

    #[test]
    fn an_optional_field_lists_none_and_every_value() {
        assert_eq!(
            Option::<Inner>::variants(),
            vec![None, Some(Inner::A), Some(Inner::B)]
        );
    }

    #[test]
    fn every_variant_and_every_nested_value_is_listed() {
        assert_eq!(
            Outer::variants(),
            vec![
                Outer::Plain,
                Outer::Nested(Inner::A),
                Outer::Nested(Inner::B),
                Outer::Pair(Inner::A, false),
                Outer::Pair(Inner::A, true),
                Outer::Pair(Inner::B, false),
                Outer::Pair(Inner::B, true),
                Outer::Named {
                    text: String::new()
                },
            ]
        );
    }
}
